//! A hostile target under `--all` (docs/security.md): a process of
//! nobody's maps crafted allocator libraries and keeps changing what their
//! paths name while tracer reads them. tracer must not hang, must not be
//! killed by SIGBUS, and must put no uprobe anywhere but at function starts
//! of the very files the process maps: checked against the kernel's own
//! list of tracer's uprobes, not against what tracer says.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tests::{
    DEBIAN_PYTHON, interrupt, scripted::Scripted, spawn_record, uprobes::uprobe_links, workload,
};

const HOST_LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
const LEAKED: u64 = 2_000;
/// bytearray(10_000) asks for one more byte, its terminating NUL.
const LEAK_SIZE: u64 = 10_001;

/// Builds `source` (tests/workloads) into `out` as a shared library.
fn shared_library(source: &str, out: &Path) {
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(out)
        .arg(workload(source))
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed on {source}");
}

/// The libraries, the decoys and the script in a directory of nobody's.
fn hostile_tree(dir: &Path) {
    for name in ["mid", "trunc", "link", "fifo", "link-decoy", "fifo-decoy"] {
        fs::create_dir(dir.join(name)).expect("mkdir");
    }
    shared_library("hostile_libc.S", &dir.join("mid/libc.so.6"));
    for name in ["trunc", "link", "fifo"] {
        shared_library("honest_alloc.c", &dir.join(name).join("libc.so.6"));
    }
    std::os::unix::fs::symlink(HOST_LIBC, dir.join("link-decoy/libc.so.6")).expect("symlink");
    let fifo = dir.join("fifo-decoy/libc.so.6");
    let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    fs::copy(workload("hostile_files.py"), dir.join("hostile_files.py")).expect("copy");
    let status = Command::new("chown")
        .args(["-R", "--no-dereference", "65534:65534"])
        .arg(dir)
        .status()
        .expect("chown");
    assert!(status.success());
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The hostile process, as nobody (setpriv execs python: the same pid).
fn start_hostile(dir: &Path) -> Scripted {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(DEBIAN_PYTHON)
        .arg(dir.join("hostile_files.py"))
        .arg(dir)
        .arg(LEAKED.to_string())
        .current_dir(dir);
    Scripted::start(cmd, "ready")
}

/// Offsets by the kernel's path of each file tracer `pid` probes now.
fn probed(pid: u32) -> BTreeMap<String, BTreeSet<u64>> {
    let mut by_path: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for link in uprobe_links(pid) {
        by_path.entry(link.path).or_default().extend(link.offsets);
    }
    by_path
}

/// What an honest recording of one Python process probes: the reference
/// for the host's files.
fn honest_probes() -> BTreeMap<String, BTreeSet<u64>> {
    let mut sleeper = Command::new(DEBIAN_PYTHON)
        .args(["-c", "import time; time.sleep(60)"])
        .spawn()
        .expect("start python");
    let tracer = spawn_record(&["--pid", &sleeper.id().to_string()]);
    tracer.wait_for("tracer: recording", Duration::from_secs(60));
    let probes = probed(tracer.child.id());
    interrupt(tracer);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    probes
}

/// The function starts of `library` by its own symbol table, as file
/// offsets (`nm` gives virtual addresses, which gcc's layout of a small
/// library makes equal to file offsets in .text; checked below).
fn function_starts(library: &Path) -> BTreeSet<u64> {
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(library)
        .output()
        .expect("nm");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let address = u64::from_str_radix(parts.next()?, 16).ok()?;
            (parts.next()? == "T").then_some(address)
        })
        .collect()
}

#[test]
fn a_hostile_libc_gets_no_probe_inside_an_instruction_nor_outside_its_own_file() {
    let reference = honest_probes();
    let host_libc = fs::canonicalize(HOST_LIBC).expect("host libc");
    let host_libc = host_libc.to_str().expect("utf-8");
    assert!(
        reference.contains_key(host_libc),
        "the honest run probed no libc: {reference:?}"
    );

    let tree = tempfile::tempdir().expect("tempdir");
    let dir = tree.path();
    hostile_tree(dir);
    let honest_starts = function_starts(&dir.join("link/libc.so.6"));
    assert!(honest_starts.len() >= 4, "{honest_starts:?}");
    let mut hostile = start_hostile(dir);

    let tracer = spawn_record(&["-v", "--all", "--exact", "--top", "1000"]);
    // Found at start-up: said before or after "recording".
    let adopted = format!("pid {}: CPython", hostile.pid());
    let mut seen = tracer.wait_for("tracer: recording", Duration::from_secs(60));
    if !seen.iter().any(|l| l.contains(&adopted)) {
        seen.extend(tracer.wait_for(&adopted, Duration::from_secs(30)));
    }
    hostile.say("go");
    hostile.expect("leaked");
    let probes = probed(tracer.child.id());
    // Stopped while the process runs: its buffers are still live.
    let r = interrupt(tracer);
    hostile.say("stop");
    let stderr = seen.join("\n") + "\n" + &r.stderr();

    // The kernel's list: nothing in the crafted libc; the host's libc at
    // the honest run's offsets only; the honest libraries only where
    // their functions start (the placement may skip a few bytes in).
    let hostile_dir = dir.to_str().expect("utf-8");
    for (path, offsets) in &probes {
        assert!(
            !path.contains("/mid/") && !path.contains("/mid-"),
            "uprobes in the crafted libc: {path} {offsets:x?}"
        );
        if let Some(honest) = reference.get(path) {
            let extra: Vec<_> = offsets.difference(honest).collect();
            assert!(
                extra.is_empty(),
                "{path}: offsets {extra:x?} not probed by an honest run"
            );
        }
        if path.starts_with(hostile_dir) {
            for offset in offsets {
                assert!(
                    honest_starts.iter().any(|s| (*s..*s + 32).contains(offset)),
                    "{path}+{offset:#x} is not in a function of that file"
                );
            }
        }
    }
    assert!(
        probes.contains_key(host_libc),
        "the host's libc was not probed: {probes:?}"
    );
    assert!(
        stderr.contains("mid/libc.so.6: its symbols put") && stderr.contains("not probed"),
        "no warning about the crafted libc:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // And the hostile process's own leak is still traced, exactly.
    let pid = hostile.pid() as u64;
    let leak: Vec<&Value> = r
        .entries("leaks")
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(pid) && e["bytes"].as_u64() >= Some(LEAK_SIZE))
        .filter(|e| e["count"].as_u64() == Some(LEAKED))
        .collect();
    assert_eq!(
        leak.len(),
        1,
        "no leak of {LEAKED} buffers in pid {pid}:\n{}",
        serde_json::to_string_pretty(&r.report)
            .unwrap_or_default()
            .chars()
            .take(6000)
            .collect::<String>()
    );
    assert_eq!(leak[0]["bytes"].as_u64(), Some(LEAKED * LEAK_SIZE));
}
