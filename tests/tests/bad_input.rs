//! Bad input: one line on stderr saying what to do, a non-zero exit, never
//! a panic.

use std::process::{Command, Output, Stdio};

use tests::tracer;

fn assert_one_line_error(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "exit status {} for {expected:?}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr:?}");
    assert!(lines[0].contains(expected), "{stderr:?} lacks {expected:?}");
    assert!(!stderr.contains("panicked"), "{stderr:?}");
}

fn tracer_path() -> std::path::PathBuf {
    std::path::PathBuf::from(tracer().get_program())
}

#[test]
fn missing_pid() {
    // A pid that was just used and is free again.
    let mut child = Command::new("true").spawn().expect("spawn");
    let pid = child.id();
    child.wait().expect("reap");
    let out = tracer()
        .args(["record", "--pid", &pid.to_string()])
        .output()
        .expect("run");
    assert_one_line_error(&out, &format!("no process with pid {pid}"));
}

#[test]
fn pid_without_libc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("sleeper.c");
    std::fs::write(
        &src,
        "#include <unistd.h>\nint main(void) { pause(); return 0; }\n",
    )
    .expect("write");
    let exe = dir.path().join("sleeper");
    let ok = Command::new("gcc")
        .args(["-static", "-s", "-O1", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(ok.success());
    let mut target = Command::new(&exe).spawn().expect("start static program");
    let out = tracer()
        .args(["record", "--pid", &target.id().to_string()])
        .output()
        .expect("run");
    target.kill().expect("kill");
    target.wait().expect("reap");
    assert_one_line_error(&out, "maps no libc");
}

#[test]
fn not_root() {
    // A copy nobody can reach: the checkout may be in root's home.
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let copy = dir.path().join("tracer");
    std::fs::copy(tracer_path(), &copy).expect("copy tracer");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .args(["record", "--pid", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv");
    assert_one_line_error(&out, "needs root");
}

#[test]
fn unknown_flag() {
    let out = tracer().args(["record", "--bogus"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(&out, "--bogus");
}

#[test]
fn nothing_to_trace() {
    let out = tracer().arg("record").output().expect("run");
    assert_one_line_error(&out, "nothing to trace");
}

#[test]
fn command_not_found() {
    let out = tracer()
        .args(["record", "--", "/nonexistent/program"])
        .output()
        .expect("run");
    assert_one_line_error(&out, "cannot run `/nonexistent/program`");
}

#[test]
fn kernel_without_uprobes() {
    // Hide the uprobe PMU in a private mount namespace: what a kernel built
    // without CONFIG_UPROBE_EVENTS looks like to tracer.
    let script = format!(
        "mount -t tmpfs none /sys/bus/event_source/devices && exec {} record --pid 1",
        tracer_path().display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("run unshare");
    assert_one_line_error(&out, "no uprobe support");
}

#[test]
fn missing_capture_file() {
    let out = tracer()
        .args(["report", "/nonexistent/capture.tracer", "leaks"])
        .output()
        .expect("run");
    assert_one_line_error(
        &out,
        "/nonexistent/capture.tracer: cannot open it: No such file or directory",
    );
}

#[test]
fn not_a_capture_file() {
    let out = tracer()
        .args(["report", "/etc/passwd", "leaks"])
        .output()
        .expect("run");
    assert_one_line_error(&out, "/etc/passwd: not a tracer capture");
}

#[test]
fn every_command_bounds_an_option_the_same_way() {
    // Declared once, checked once: `record`, `top` and `daemon` refuse the
    // same out-of-range value with the same line.
    let cases: [(&str, &str, &str); 6] = [
        ("--sample-bytes", "0", "--sample-bytes must be from 1 to"),
        (
            "--sample-bytes",
            "1099511627777",
            "--sample-bytes must be from 1 to",
        ),
        ("--duration", "0", "--duration must be a positive number"),
        (
            "--duration",
            "31536001",
            "--duration must be a positive number",
        ),
        (
            "--interval",
            "0.001",
            "--interval must be from 0.01 to 3600",
        ),
        ("--interval", "3601", "--interval must be from 0.01 to 3600"),
    ];
    for (option, value, says) in cases {
        let errors: Vec<String> = ["record", "top", "daemon"]
            .into_iter()
            .map(|command| {
                let out = tracer()
                    .args([command, "--pid", "1", option, value])
                    .output()
                    .expect("run tracer");
                assert_one_line_error(&out, says);
                String::from_utf8_lossy(&out.stderr).into_owned()
            })
            .collect();
        assert!(
            errors.iter().all(|e| e == &errors[0]),
            "{option} {value}: {errors:?}"
        );
    }
}
