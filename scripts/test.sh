#!/usr/bin/env bash
# The single test command for ferry: installs what the end-to-end tests need
# (idempotently), then runs formatting, lints and every test.
#
#   scripts/test.sh
#
# Installs, when missing:
#   - kcat (Debian package; needs root for apt-get)
#   - ip (iproute2), for the network-namespace tests (they skip, saying so,
#     where namespaces cannot be made, e.g. without root)
#   - .venv: a Python virtualenv with kafka-python 3.x and its codec packages
# Environment:
#   FERRY_PYTHON   interpreter for the kafka-python tests (default: .venv/bin/python)
#   CARGO_TARGET_DIR, RUST_TEST_THREADS  passed through to cargo
set -euo pipefail

cd "$(dirname "$0")/.."
root="$(pwd)"

log() { printf '==> %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: $* missing and not root: install it (apt-get install $*) and re-run" >&2
        exit 1
    fi
    if [ "$apt_updated" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- kcat -------------------------------------------------------------------
if ! command -v kcat >/dev/null 2>&1; then
    log "installing kcat"
    apt_install kcat
fi

# --- ip, for the network-namespace tests ------------------------------------
if ! command -v ip >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    log "installing iproute2"
    apt_install iproute2
fi

# --- Python virtualenv with kafka-python --------------------------------------
venv="$root/.venv"
python_packages=("kafka-python>=3,<4" lz4 zstandard python-snappy cramjam)
python_check='import kafka, lz4.frame, zstandard, snappy, cramjam
from kafka import codec
assert kafka.__version__.split(".")[0] == "3", kafka.__version__
assert codec.has_lz4() and codec.has_zstd() and codec.has_snappy()'
if [ -z "${FERRY_PYTHON:-}" ]; then
    if ! { [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$python_check" 2>/dev/null; }; then
        log "creating $venv with kafka-python"
        if ! command -v python3 >/dev/null 2>&1; then
            apt_install python3 python3-venv
        fi
        if ! python3 -m venv "$venv" 2>/dev/null; then
            rm -rf "$venv"
            apt_install python3-venv
            python3 -m venv "$venv"
        fi
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "${python_packages[@]}"
        "$venv/bin/python" -c "$python_check"
    fi
    export FERRY_PYTHON="$venv/bin/python"
fi
log "python for kafka-python tests: $FERRY_PYTHON"

# --- Rust -------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
log "cargo test"
# The end-to-end tests mostly wait on the network and on brokers in child
# processes, so run more of them at once than there are cores.
cargo test --workspace -- --test-threads="${RUST_TEST_THREADS:-4}"
log "fuzzing (each target for ${FUZZ_SECONDS:-10}s)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
