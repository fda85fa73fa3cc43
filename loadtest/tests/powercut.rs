//! Power cuts with a real kernel, as CI runs them: `hookgate-loadtest powercut` boots a
//! QEMU guest with hookgate's journal on an ext4 virtio disk, kills QEMU with SIGKILL
//! under load and boots again; every acknowledged event must be in the journal (and,
//! with the broker, in the queue). Fails on any loss, never on speed.
//!
//! Outside CI, a missing QEMU, kernel, busybox or cpio skips with a message; under `CI`
//! it fails (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

fn loadtest() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hookgate-loadtest"))
}

/// What the guest needs from the host, or the first thing missing.
fn missing() -> Option<String> {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()))
    };
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("cpio", "cpio"),
        ("mkfs.ext4", "e2fsprogs"),
        ("socat", "socat"),
    ] {
        if !on_path(tool) {
            return Some(format!("{tool} (Debian: {package})"));
        }
    }
    let kernel = std::fs::read_dir("/boot").ok().is_some_and(|dir| {
        dir.filter_map(Result::ok).any(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with("vmlinuz-") && name.ends_with("cloud-amd64")
        })
    });
    (!kernel).then(|| "/boot/vmlinuz-*cloud-amd64 (Debian: linux-image-cloud-amd64)".into())
}

/// Whether to run: false (with a message) outside CI when something is missing.
fn can_run(test: &str) -> bool {
    match missing() {
        None => true,
        Some(what) if std::env::var_os("CI").is_some() => {
            panic!("{test}: {what} is missing, and CI must run the power-cut test")
        }
        Some(what) => {
            eprintln!("{test}: skipped, {what} is missing");
            false
        }
    }
}

fn powercut(args: &[&str]) -> serde_json::Value {
    let hookgate = loadtest().with_file_name("hookgate");
    assert!(
        hookgate.exists(),
        "{} is missing: run `cargo test --workspace` first",
        hookgate.display()
    );
    let out = Command::new(loadtest())
        .arg("powercut")
        .arg("--hookgate")
        .arg(&hookgate)
        .args(args)
        .arg("--json")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stderr}"));
    eprintln!("{report}");
    report
}

fn assert_nothing_lost(report: &serde_json::Value, cycles: u64) {
    assert_eq!(report["failure"], serde_json::Value::Null, "{report}");
    assert_eq!(report["cycles"], cycles, "{report}");
    assert!(
        report["acked"].as_u64().unwrap() > 0,
        "nothing was acknowledged: {report}"
    );
    assert_eq!(report["journal"]["lost"], 0, "{report}");
    assert_eq!(report["journal"]["unexpected"], 0, "{report}");
    assert_eq!(report["forgotten_duplicates"], 0, "{report}");
    assert_eq!(report["ok"], true, "{report}");
}

/// One cut at each moment: anywhere, in a burst of duplicates, during the index flush,
/// just past a segment boundary, and while compaction removes events and segments.
#[test]
fn five_power_cuts_one_at_each_moment_lose_nothing_acknowledged() {
    if !can_run("five_power_cuts_one_at_each_moment_lose_nothing_acknowledged") {
        return;
    }
    let report = powercut(&["--cycles", "5"]);
    assert_nothing_lost(&report, 5);
    assert!(
        report["compacted"].as_u64().unwrap() > 0,
        "the compaction moment removed nothing, so no cut came during compaction: {report}"
    );
}

#[test]
fn two_power_cuts_with_the_broker_lose_nothing_from_the_queue() {
    if !can_run("two_power_cuts_with_the_broker_lose_nothing_from_the_queue") {
        return;
    }
    let report = powercut(&["--cycles", "2", "--broker"]);
    assert_nothing_lost(&report, 2);
    assert_eq!(report["queue"]["lost"], 0, "{report}");
    assert_eq!(report["queue"]["unexpected"], 0, "{report}");
}
