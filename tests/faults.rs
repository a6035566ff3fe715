//! Faults from outside the request path (issue 8): damaged or vanishing weights, an
//! unwritable lock file or a full /tmp, signals in every phase (out-of-range settings are in
//! `server::bad_settings_and_a_taken_port_are_refused_at_start`). Each one ends in a clear
//! message and a defined exit or refusal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::server_util::Server;
use crate::util::{classify, manifest_with_weights, root, shared, stderr_of, COMMITTED_SHA256};

fn committed_weights() -> PathBuf {
    root().join("weights/resnet50.safetensors")
}

/// A private copy of the committed weights and a manifest that points at it.
fn weights_copy(dir: &Path) -> (PathBuf, PathBuf) {
    let weights = dir.join("resnet50.safetensors");
    std::fs::copy(committed_weights(), &weights).unwrap();
    let manifest = manifest_with_weights(dir, &weights, COMMITTED_SHA256);
    (weights, manifest)
}

fn tiger() -> PathBuf {
    shared().join("data/photos/tiger.jpg")
}

/// `classify predict` with this manifest stops at start-up (exit 2) with a message that
/// names the weights file and says `reason`.
fn refused_at_start(manifest: &Path, reason: &str) {
    let output = classify(&[
        "predict",
        "--manifest",
        manifest.to_str().unwrap(),
        tiger().to_str().unwrap(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a model that does not load is a start-up error"
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(reason) && stderr.contains("resnet50.safetensors"),
        "{stderr}"
    );
}

#[test]
fn flipped_bytes_in_the_weights_are_caught_by_the_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, manifest) = weights_copy(dir.path());
    let mut bytes = std::fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40; // one bit inside a tensor: the file still parses
    std::fs::write(&weights, bytes).unwrap();
    refused_at_start(&manifest, "its BLAKE3 is");
}

#[test]
fn unreadable_weights_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("resnet50.safetensors");
    // A directory where the file should be: unreadable even for root.
    std::fs::create_dir(&weights).unwrap();
    let manifest = manifest_with_weights(dir.path(), &weights, COMMITTED_SHA256);
    refused_at_start(&manifest, "cannot read");
}

#[test]
fn replacing_the_weights_while_serving_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, manifest) = weights_copy(dir.path());
    let server = Server::ready(&["--manifest", manifest.to_str().unwrap()], &[]);
    let photo = std::fs::read(tiger()).unwrap();
    let before = server.post("/", &photo);
    assert_eq!(before.status, 200);
    // Overwritten in place (same inode) and then replaced by a new file.
    std::fs::write(&weights, b"not weights").unwrap();
    let after_overwrite = server.post("/", &photo);
    std::fs::remove_file(&weights).unwrap();
    std::fs::write(&weights, vec![0u8; 1 << 20]).unwrap();
    let after_replace = server.post("/", &photo);
    for after in [after_overwrite, after_replace] {
        assert_eq!(after.status, 200, "{}", after.body);
        assert_eq!(after.json()["predictions"], before.json()["predictions"]);
    }
    assert_eq!(server.get("/_/health").status, 200);
}

#[test]
fn an_unwritable_lock_file_is_reported_and_serving_goes_on() {
    // Under a file, not a directory: fails for root too, like a read-only /tmp.
    let server = Server::ready(&["--lock-file", "/dev/null/.lock"], &[]);
    let log = server.log().join("\n");
    assert!(log.contains("cannot write the lock file"), "{log}");
    assert_eq!(server.get("/_/health").status, 200);
    let photo = std::fs::read(tiger()).unwrap();
    assert_eq!(server.post("/", &photo).status, 200);
}

/// A full /tmp: a tmpfs with no inode left, so not even the empty lock file can be
/// created (ENOSPC). The function warns and serves, as with a read-only /tmp. Mounting
/// needs root, which CI has (it installs packages and builds images).
#[test]
fn a_full_tmp_is_reported_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4k,nr_inodes=1", "tmpfs"])
        .arg(dir.path())
        .output()
        .expect("mount runs");
    assert!(
        mount.status.success(),
        "this test mounts a full tmpfs and needs root: {}",
        String::from_utf8_lossy(&mount.stderr)
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    let lock = dir.path().join(".lock");
    let server = Server::ready(&["--lock-file", lock.to_str().unwrap()], &[]);
    let log = server.log().join("\n");
    assert!(
        log.contains("cannot write the lock file") && log.contains("No space left"),
        "{log}"
    );
    assert_eq!(server.get("/_/ready").status, 200);
    let photo = std::fs::read(tiger()).unwrap();
    assert_eq!(server.post("/", &photo).status, 200);
}

/// SIGTERM and SIGINT while the models load and while idle: exit 0, promptly, with the
/// lock file gone (the busy phase is `sigterm_finishes_accepted_requests_and_exits_0`).
#[test]
fn sigterm_and_sigint_while_loading_and_idle_exit_0() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut loading = Server::start(&[], &[]);
        loading.signal(signal);
        let started = Instant::now();
        let status = loading.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "signal {signal} while loading");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!loading.lock_file.exists());

        let mut idle = Server::ready(&[], &[]);
        assert!(idle.lock_file.exists());
        idle.signal(signal);
        let status = idle.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "signal {signal} while idle");
        assert!(!idle.lock_file.exists(), "the lock file is removed");
    }
}

#[test]
fn sigint_while_busy_finishes_the_request() {
    let mut server = Server::ready(&["--workers", "1", "--write-timeout", "120s"], &[]);
    let photo = std::fs::read(tiger()).unwrap();
    let status = std::thread::scope(|scope| {
        let client = scope.spawn(|| server.post("/", &photo).status);
        std::thread::sleep(Duration::from_millis(100));
        server.signal(libc::SIGINT);
        client.join().unwrap()
    });
    assert_eq!(status, 200);
    assert_eq!(server.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn no_request_path_reaches_the_file_system() {
    let server = Server::ready(&[], &[]);
    let photo = std::fs::read(tiger()).unwrap();
    for path in [
        "/../../etc/passwd",
        "/weights/models.toml",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/?model=../weights/resnet50.safetensors",
        "/?model=/etc/passwd",
    ] {
        let answer = server.post(path, &photo);
        assert_eq!(answer.status, 404, "{path}: {}", answer.body);
        assert!(!answer.body.contains("root:"), "{path}");
        let answer = server.get(path);
        assert!(
            answer.status == 404 || (path.starts_with("/?") && answer.status == 200),
            "{path}: {}",
            answer.status
        );
        assert!(
            !answer.body.contains("root:") && !answer.body.contains("[models"),
            "{path}"
        );
    }
}
