//! A full disk (ENOSPC) on a size-limited tmpfs: a produce gets
//! KAFKA_STORAGE_ERROR, the broker stays up and keeps serving reads, no segment
//! is left corrupt, and writes resume once space is freed.
//!
//! Needs root to mount the tmpfs (CI runs as root); elsewhere the test prints a
//! SKIP line with the reason to stderr and passes.

mod reliability;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use reliability::*;

const KAFKA_STORAGE_ERROR: i16 = 56;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { mount, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Writes a file until the filesystem is full; returns its path.
fn fill(path: &Path) -> PathBuf {
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0xA5u8; 64 * 1024];
    let mut small = false;
    for _ in 0..1_000_000 {
        let data = if small { &chunk[..512] } else { &chunk[..] };
        match f.write(data) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) && !small => small = true,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    path.to_path_buf()
}

#[test]
fn enospc_gives_storage_error_keeps_reads_and_recovers_when_space_is_freed() {
    let fs = match Tmpfs::mount("24m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIP enospc test: cannot mount a size-limited tmpfs: {why}");
            return;
        }
    };
    let data = fs.mount.join("data");
    let mut broker = Proc::start(&data, "127.0.0.1:0", &[]);
    let addr = broker.addr.clone();
    let topic = "full-disk";
    create_topic(&addr, topic, 1, &[("segment.bytes", "1048576")]);

    // Some records before the disk fills.
    for i in 0..5 {
        let code = produce_raw(
            &addr,
            topic,
            0,
            record_batch(&format!("before-{i}-"), 10, 100),
        );
        assert_eq!(code, 0, "produce before the disk is full");
    }

    let filler = fill(&fs.mount.join("filler"));
    // Big batches so that a write cannot fit into a block a previous file left.
    let mut storage_errors = 0;
    for i in 0..5 {
        let code = produce_raw(
            &addr,
            topic,
            0,
            record_batch(&format!("full-{i}-"), 50, 4000),
        );
        assert!(
            code == KAFKA_STORAGE_ERROR,
            "produce on a full disk: error code {code}, want KAFKA_STORAGE_ERROR (56)"
        );
        storage_errors += 1;
    }
    assert!(broker.is_running(), "broker died on ENOSPC");
    eprintln!("full disk: {storage_errors} produces got KAFKA_STORAGE_ERROR");

    // Reads keep working and show exactly the records written before.
    let before = values(&read_partition(&addr, topic, 0).expect("fetch on a full disk"));
    let want: Vec<String> = (0..5)
        .flat_map(|i| (0..10).map(move |j| format!("before-{i}-{j}")))
        .collect();
    let trimmed: Vec<String> = before
        .iter()
        .map(|v| v.trim_end_matches('.').to_string())
        .collect();
    assert_eq!(trimmed, want, "records readable while the disk is full");

    // Free the space: writes resume on the same partition, without a restart.
    std::fs::remove_file(&filler).expect("remove filler");
    let mut resumed = false;
    for _ in 0..50 {
        if produce_raw(&addr, topic, 0, record_batch("after-", 10, 100)) == 0 {
            resumed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(resumed, "writes did not resume after space was freed");
    let all = values(&read_partition(&addr, topic, 0).expect("fetch after"));
    let mut want_all = want.clone();
    want_all.extend((0..10).map(|j| format!("after-{j}")));
    let trimmed: Vec<String> = all
        .iter()
        .map(|v| v.trim_end_matches('.').to_string())
        .collect();
    assert_eq!(
        trimmed, want_all,
        "every acknowledged record once, in order"
    );

    // No segment was left corrupt, before or after a restart.
    broker.stop();
    let (ok, report) = verify(&data);
    assert!(ok, "ferry log verify after ENOSPC:\n{report}");
    broker.restart();
    let again = values(&read_partition(&broker.addr, topic, 0).expect("fetch after restart"));
    assert_eq!(again.len(), want_all.len(), "records after restart");
    broker.stop();
}
