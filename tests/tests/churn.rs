//! `--all` on a host that starts processes without end: short Python runs
//! and distinct non-Python programs, hundreds of each. tracer's open
//! descriptors and resident set stay flat once warm (every per-process
//! table is dropped at exit, execs of untraced programs touch nothing);
//! and a pid used again is a new process each time.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use tests::{DEBIAN_PYTHON, finish, interrupt, resources, spawn_record};

/// Rounds of one short Python run and one distinct program each.
const WARM_ROUNDS: usize = 100;
const ROUNDS: usize = 400;
/// The resident set may move by this much after warming up (allocator
/// fragmentation, caches filling to their caps).
const RSS_TOLERANCE_PERCENT: u64 = 10;
/// Descriptors may differ by a few in flight (a process being adopted).
const FD_SLACK: u64 = 8;

fn open_descriptors(pid: u32) -> u64 {
    resources::open_descriptors(pid).expect("read tracer's fds")
}

fn rss_kib(pid: u32) -> u64 {
    resources::rss_kib(pid).expect("VmRSS")
}

/// Copies of /bin/true, each its own file (inode) to exec.
fn programs(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let path = dir.join(format!("prog{i}"));
            fs::copy("/bin/true", &path).expect("copy /bin/true");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
            path
        })
        .collect()
}

fn churn(programs: &[PathBuf]) {
    for program in programs {
        let python = Command::new(DEBIAN_PYTHON)
            .args(["-c", "x = [bytearray(1000) for _ in range(1000)]"])
            .stdout(Stdio::null())
            .status()
            .expect("run python");
        assert!(python.success());
        assert!(Command::new(program).status().expect("run").success());
    }
}

#[test]
fn descriptors_and_memory_stay_flat_under_exec_churn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = programs(dir.path(), WARM_ROUNDS + ROUNDS);
    let tracer = spawn_record(&["--all"]);
    tracer.wait_for("tracer: recording", Duration::from_secs(60));
    let pid = tracer.child.id();

    churn(&all[..WARM_ROUNDS]);
    // Let the last exits be seen.
    std::thread::sleep(Duration::from_secs(1));
    let (fds_warm, rss_warm) = (open_descriptors(pid), rss_kib(pid));
    churn(&all[WARM_ROUNDS..]);
    // The last runs' exits and adoptions settle (each holds a pidfd and its
    // files until then); a leak does not.
    let settled = std::time::Instant::now() + Duration::from_secs(10);
    std::thread::sleep(Duration::from_secs(1));
    while open_descriptors(pid) > fds_warm + FD_SLACK && std::time::Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (fds, rss) = (open_descriptors(pid), rss_kib(pid));
    eprintln!(
        "after {WARM_ROUNDS} rounds: {fds_warm} fds, {rss_warm} KiB; after {} more: {fds} fds, {rss} KiB",
        ROUNDS
    );
    assert!(
        fds <= fds_warm + FD_SLACK,
        "descriptors grew from {fds_warm} to {fds} over {ROUNDS} rounds"
    );
    assert!(
        rss * 100 <= rss_warm * (100 + RSS_TOLERANCE_PERCENT),
        "resident set grew from {rss_warm} KiB to {rss} KiB over {ROUNDS} rounds"
    );

    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let r = finish(tracer);
    assert!(!r.stderr().contains("error"), "{}", r.stderr());
    // The runs were traced (those adopted before they exited: most), each
    // its own process.
    let traced = r.report["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter(|p| {
            p["command"]
                .as_str()
                .is_some_and(|c| c.contains("bytearray(1000)"))
        })
        .count();
    eprintln!("{traced} of {} Python runs traced", WARM_ROUNDS + ROUNDS);
    assert!(
        traced >= (WARM_ROUNDS + ROUNDS) / 2,
        "only {traced} of {} Python runs traced",
        WARM_ROUNDS + ROUNDS
    );
}

/// Python runs one after another under one pid.
const SAME_PID_RUNS: usize = 8;

/// A pid no process has now.
fn free_pid() -> u32 {
    (20_000..30_000)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid")
}

/// Runs started one after another under the same pid, as on a busy host
/// or with a small pid_max: each is its own process in the report, with
/// its own instance. The kernel's next pid is set through ns_last_pid
/// (rather than shrinking pid_max, which would starve every other process
/// on the host of pids while the test runs).
#[test]
fn a_reused_pid_is_a_new_process_each_time() {
    let tracer = spawn_record(&["--all", "--exact"]);
    tracer.wait_for("tracer: recording", Duration::from_secs(60));
    let pid = free_pid();
    let mut under_pid = 0;
    for run in 0..SAME_PID_RUNS {
        fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("set the next pid (ns_last_pid)");
        let script = format!(
            "import time; x = [bytearray(1000) for _ in range(1000)]; time.sleep(0.5)  # run {run}"
        );
        let mut python = Command::new(DEBIAN_PYTHON)
            .args(["-c", &script])
            .spawn()
            .expect("run python");
        // Another process on the host may take the pid first.
        if python.id() == pid {
            under_pid += 1;
        }
        assert!(python.wait().expect("wait").success());
    }
    assert!(
        under_pid >= SAME_PID_RUNS / 2,
        "only {under_pid} of {SAME_PID_RUNS} runs got pid {pid}"
    );
    let r = interrupt(tracer);
    let instances: Vec<u64> = r.report["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .filter(|p| {
            p["command"]
                .as_str()
                .is_some_and(|c| c.contains("bytearray(1000)"))
        })
        .map(|p| p["pid_instance"].as_u64().unwrap_or(0))
        .collect();
    let distinct: std::collections::BTreeSet<u64> = instances.iter().copied().collect();
    assert_eq!(
        (instances.len(), distinct.len()),
        (under_pid, under_pid),
        "{under_pid} runs under pid {pid}, reported as instances {instances:?}"
    );
}
