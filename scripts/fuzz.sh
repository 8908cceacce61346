#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a short, bounded time.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 20, or $FUZZ_SECONDS)
#
# cargo-fuzz needs nightly-only compiler flags (-Zsanitizer=address); with only
# a stable toolchain installed, RUSTC_BOOTSTRAP=1 lets stable accept them.
# Installs cargo-fuzz (cargo install) when missing. New inputs found go to a
# temporary directory, not into the committed seed corpus (fuzz/corpus/<target>);
# a crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${1:-${FUZZ_SECONDS:-20}}"
targets=(request_frame request_body record_batch log_recovery)

log() { printf '==> %s\n' "$*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
# The fuzz workspace builds with sanitizer flags: keep its artifacts apart.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}/fuzz"

cd fuzz
log "building fuzz targets"
cargo fuzz build -O

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
    log "fuzzing $target for ${seconds}s"
    mkdir -p "$work/$target"
    cargo fuzz run -O "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        2>"$work/$target.log" || {
        tail -n 40 "$work/$target.log" >&2
        log "FAILED: $target (the crashing input is in fuzz/artifacts/$target/)"
        exit 1
    }
    grep -E "stat::number_of_executed_units|Done" "$work/$target.log" | tail -n 2 >&2 || true
done
log "all fuzz targets ran ${seconds}s without a crash"
