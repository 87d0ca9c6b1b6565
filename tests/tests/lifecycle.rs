//! A launched command's life with tracer's: it runs as the invoking user,
//! it is stopped when tracer is (SIGTERM, SIGHUP), it may die while tracer
//! loads; a reader that closes tracer's stdout ends it quietly. Nothing is
//! left stopped or running behind.

use std::{
    fs,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use tests::{DEBIAN_PYTHON, Running, spawn_record, tracer};

const SLEEPER: &str = "import time; time.sleep(600)";

/// The process tracer launched: tracer's child (pid, start time).
fn launched(tracer_pid: u32) -> (u32, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    // tracer's other child, the guard of held processes, runs tracer's own
    // executable: the command is the child that exec'd another.
    let tracer_exe = fs::read_link(format!("/proc/{tracer_pid}/exe")).expect("tracer's exe");
    loop {
        for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some((ppid, _, start)) = stat(pid)
                && ppid == tracer_pid
                && fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe != tracer_exe)
            {
                return (pid, start);
            }
        }
        assert!(Instant::now() < deadline, "tracer launched nothing");
        thread::sleep(Duration::from_millis(20));
    }
}

/// (parent, state, start time) of `pid` from /proc/PID/stat.
fn stat(pid: u32) -> Option<(u32, char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = fields.first()?.chars().next()?;
    Some((fields[1].parse().ok()?, state, fields[19].parse().ok()?))
}

/// Waits until the launched process is gone (or a zombie about to be
/// reaped), never seeing it stopped.
fn assert_gone_within(process: (u32, u64), limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        match stat(process.0) {
            Some((_, state, start)) if start == process.1 && state != 'Z' => {
                assert_ne!(state, 'T', "the launched command was left stopped");
                assert_ne!(state, 't', "the launched command was left traced");
                assert!(
                    Instant::now() < deadline,
                    "the launched command still runs {limit:?} after tracer stopped"
                );
            }
            _ => return,
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill has no memory preconditions.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

fn stop_with(sig: i32) {
    let mut running: Running = spawn_record(&["--", DEBIAN_PYTHON, "-c", SLEEPER]);
    running.wait_for("tracer: recording", Duration::from_secs(60));
    let command = launched(running.child.id());
    thread::sleep(Duration::from_millis(500));
    signal(&running.child, sig);
    let status = running.child.wait().expect("wait for tracer");
    assert_eq!(status.code(), Some(0), "tracer ended with {status}");
    let stderr: Vec<String> = running.stderr_lines.try_iter().collect();
    assert!(!stderr.iter().any(|l| l.contains("panicked")), "{stderr:?}");
    // Its reports were written: the signal stops the recording, like ^C.
    assert!(running.dir.path().join("report.json").exists());
    assert_gone_within(command, Duration::from_secs(2));
}

#[test]
fn sigterm_stops_tracer_and_its_command() {
    stop_with(libc::SIGTERM);
}

#[test]
fn sighup_stops_tracer_and_its_command() {
    stop_with(libc::SIGHUP);
}

#[test]
fn detached_command_keeps_running() {
    let mut running = spawn_record(&["--detach-command", "--", DEBIAN_PYTHON, "-c", SLEEPER]);
    running.wait_for("tracer: recording", Duration::from_secs(60));
    let (pid, start) = launched(running.child.id());
    thread::sleep(Duration::from_millis(500));
    signal(&running.child, libc::SIGTERM);
    let status = running.child.wait().expect("wait for tracer");
    assert!(status.success(), "tracer ended with {status}");
    thread::sleep(Duration::from_secs(1));
    let alive = stat(pid).is_some_and(|(_, state, s)| s == start && state != 'Z');
    // SAFETY: kill has no memory preconditions; the pid is the command's.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(
        alive,
        "--detach-command: the command did not outlive tracer"
    );
}

#[test]
fn command_killed_while_tracer_loads_is_reported_and_nothing_is_left() {
    let running = spawn_record(&["--", DEBIAN_PYTHON, "-c", SLEEPER]);
    // Killed while held in the loader, as soon as it exists.
    let command = launched(running.child.id());
    // SAFETY: kill has no memory preconditions; the pid is the command's.
    unsafe { libc::kill(command.0 as i32, libc::SIGKILL) };
    let mut running = running;
    let status = running.child.wait().expect("wait for tracer");
    let stderr: Vec<String> = running.stderr_lines.iter().collect();
    assert!(
        status.code().is_some(),
        "tracer was killed by a signal ({status}): {stderr:?}"
    );
    assert!(!stderr.iter().any(|l| l.contains("panicked")), "{stderr:?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.starts_with("error: ") && l.contains("killed by SIGKILL")),
        "how the command ended is not said: {stderr:?}"
    );
    assert_gone_within(command, Duration::from_secs(1));
}

#[test]
fn command_runs_as_the_user_who_ran_sudo_or_the_one_named() {
    let script = "import os; print(f'ids={os.getuid()},{os.getgid()}')";
    for (env, args) in [
        (Some("65534"), vec![]),
        (None, vec!["--user", "nobody"]),
        (None, vec!["--user", "65534"]),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = tracer();
        if let Some(id) = env {
            cmd.env("SUDO_UID", id).env("SUDO_GID", id);
        }
        let out = cmd
            .arg("record")
            .arg("-o")
            .arg(dir.path())
            .args(&args)
            .args(["--", DEBIAN_PYTHON, "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("run tracer");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("ids=65534,65534"),
            "{env:?} {args:?}: the command did not run as nobody: {stdout}"
        );
    }
}

#[test]
fn a_closed_stdout_is_a_quiet_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tracer()
        .arg("record")
        .arg("-o")
        .arg(dir.path())
        .args([
            "--",
            DEBIAN_PYTHON,
            "-c",
            "x = [bytes(100) for _ in range(1000)]",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run tracer");
    assert!(out.status.success());
    let capture = dir.path().join("capture.tracer");
    for kind in ["summary", "hotspots", "flamegraph"] {
        // The reader is gone before tracer writes: every write is EPIPE.
        let mut child = tracer()
            .arg("report")
            .arg(&capture)
            .arg(kind)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tracer report");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code().is_some(),
            "{kind}: killed by {}",
            out.status
        );
        assert!(stderr.is_empty(), "{kind}: {stderr}");
    }
}
