//! tracer runs as root beside other users' processes and reads files they
//! control (docs/security.md): outputs are never written through a link or
//! into someone else's directory, and a hostile capture is an error, not
//! an abort.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink},
    path::Path,
    process::{Command, Output, Stdio},
};

use tests::{DEBIAN_PYTHON, tracer};
use tracer::{
    capture::{Record, Writer},
    event::StackId,
    frame::{Frame, FrameKind, StackDef},
    process::MemorySample,
};

const NOBODY: u32 = 65534;
const CANARY: &str = "root's file: tracer must not write here\n";

/// `tracer record -o DIR` of a short Python command.
fn record_into(dir: &Path) -> Output {
    tracer()
        .arg("record")
        .arg("-o")
        .arg(dir)
        .args(["--", DEBIAN_PYTHON, "-c", "x = [0] * 1000"])
        .stdin(Stdio::null())
        .output()
        .expect("run tracer")
}

fn assert_refused(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted; stderr: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(expected),
        "{stderr:?} does not end with an error naming {expected:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
}

#[test]
fn outputs_are_never_written_through_links_or_into_foreign_directories() {
    let root = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let canary = root.path().join("canary");
    fs::write(&canary, CANARY).expect("write canary");

    // A directory of nobody's, with the capture name planted as a link to
    // root's file: refused, before anything is written.
    let foreign = root.path().join("foreign");
    fs::create_dir(&foreign).expect("mkdir");
    symlink(&canary, foreign.join("capture.tracer")).expect("symlink");
    chown(&foreign, NOBODY);
    assert_refused(&record_into(&foreign), "belongs to uid 65534");

    // Root's own directory with the planted links (as if the user had
    // write access to it): no output is opened through them.
    for name in ["capture.tracer", "report.json", "stacks.folded"] {
        let planted = root.path().join(format!("planted-{name}"));
        fs::create_dir(&planted).expect("mkdir");
        symlink(&canary, planted.join(name)).expect("symlink");
        assert_refused(&record_into(&planted), name);
    }

    // `-o` itself a link to a directory: refused.
    let target = root.path().join("real");
    fs::create_dir(&target).expect("mkdir");
    let link = root.path().join("link");
    symlink(&target, &link).expect("symlink");
    assert_refused(&record_into(&link), "symbolic link");

    // `report -o` onto a link: refused.
    let fresh = root.path().join("fresh");
    let out = record_into(&fresh);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report_link = root.path().join("summary.txt");
    symlink(&canary, &report_link).expect("symlink");
    let out = tracer()
        .arg("report")
        .arg(fresh.join("capture.tracer"))
        .arg("summary")
        .arg("-o")
        .arg(&report_link)
        .output()
        .expect("run tracer report");
    assert_refused(&out, "summary.txt");

    assert_eq!(
        fs::read_to_string(&canary).expect("read canary"),
        CANARY,
        "the canary changed"
    );
    assert_eq!(
        fs::symlink_metadata(&canary).expect("stat").mode() & 0o7777,
        0o644
    );

    // A new directory is 0700 and every output in it 0600.
    let dir_mode = fs::metadata(&fresh).expect("stat").mode() & 0o7777;
    assert_eq!(dir_mode, 0o700, "{} has mode {dir_mode:o}", fresh.display());
    let mut outputs = 0;
    for entry in fs::read_dir(&fresh).expect("read_dir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("stat");
        assert!(meta.is_file(), "{:?} is not a file", entry.path());
        assert_eq!(
            meta.mode() & 0o7777,
            0o600,
            "{:?} has mode {:o}",
            entry.path(),
            meta.mode() & 0o7777
        );
        outputs += 1;
    }
    assert!(outputs >= 4, "only {outputs} outputs written");
}

#[test]
fn the_daemon_writes_its_capture_and_spool_only_into_directories_of_its_own() {
    let root = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let foreign = root.path().join("foreign");
    fs::create_dir(&foreign).expect("mkdir");
    chown(&foreign, NOBODY);
    let mut sleeper = Command::new(DEBIAN_PYTHON)
        .args(["-c", "import time; time.sleep(60)"])
        .spawn()
        .expect("start python");
    let pid = sleeper.id().to_string();
    let daemon = |extra: &[&std::ffi::OsStr]| {
        tracer()
            .args(["daemon", "--pid", &pid, "--duration", "2"])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run tracer daemon")
    };
    let foreign_arg = foreign.as_os_str();
    assert_refused(
        &daemon(&["-o".as_ref(), foreign_arg]),
        "belongs to uid 65534",
    );
    assert_refused(
        &daemon(&[
            "--pyroscope".as_ref(),
            "http://127.0.0.1:9".as_ref(),
            "--spool-dir".as_ref(),
            foreign_arg,
        ]),
        "belongs to uid 65534",
    );
    // And a directory it makes is 0700, its segments 0600.
    let own = root.path().join("own");
    let out = daemon(&["-o".as_ref(), own.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::metadata(&own).expect("stat").mode() & 0o7777, 0o700);
    let mut segments = 0;
    for entry in fs::read_dir(&own).expect("read_dir").flatten() {
        assert_eq!(entry.metadata().expect("stat").mode() & 0o7777, 0o600);
        segments += 1;
    }
    assert!(segments >= 1, "no segment written");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(fs::read_dir(&foreign).expect("read_dir").next().is_none());
}

/// A stack of `frames` frames whose strings are each `len` bytes: a few
/// hundred compressed bytes, megabytes once read.
fn huge_stack(id: u32, frames: usize, len: usize) -> Record {
    let frame = Frame {
        kind: FrameKind::Native,
        function: "f".repeat(len),
        module: "m".repeat(len),
        file: None,
        line: None,
        offset: Some(0),
        inlined: false,
        unknown: None,
    };
    Record::Stack {
        id: StackId(id),
        def: StackDef {
            native: vec![frame; frames],
            native_truncated: false,
            python: Vec::new(),
            python_truncated: false,
        },
    }
}

#[test]
fn a_capture_that_expands_to_gigabytes_is_an_error_under_a_1g_address_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bomb.tracer");
    let mut writer = Writer::new(fs::File::create(&path).expect("create")).expect("writer");
    writer
        .write(&Record::Start {
            start_ns: 0,
            probes: String::new(),
        })
        .expect("write");
    // Millions of samples...
    let sample = Record::Sample(MemorySample {
        pid: 1,
        ts_ns: 1,
        live_bytes: 1,
        rss_bytes: Some(1),
    });
    for _ in 0..3_000_000 {
        writer.write(&sample).expect("write");
    }
    // ...and stacks of ~4 MiB each, 1.2 GiB in all once read.
    for id in 0..300 {
        writer.write(&huge_stack(id, 1000, 2000)).expect("write");
    }
    writer.finish().expect("finish");
    let size = fs::metadata(&path).expect("stat").len();
    assert!(size < 400 << 10, "the crafted capture is {size} bytes");

    let out = Command::new("prlimit")
        .arg(format!("--as={}", 1u64 << 30))
        .arg(tracer().get_program())
        .arg("report")
        .arg(&path)
        .arg("summary")
        .output()
        .expect("run prlimit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("a {size}-byte capture read under a 1 GiB address space: {stderr}");
    assert!(
        out.status.code().is_some(),
        "tracer was killed by a signal ({}): {stderr}",
        out.status
    );
    assert!(!out.status.success(), "a {size}-byte bomb was accepted");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("memory allocation"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("bomb.tracer"),
        "no one-line error naming the capture: {stderr}"
    );
}
