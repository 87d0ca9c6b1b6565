//! packaging/tracer.service: `systemd-analyze verify` passes, and the
//! daemon it starts works with exactly the unit's capabilities, tells
//! systemd READY=1, pings the watchdog and pushes windows. Where systemd is
//! PID 1 the unit is started by systemd itself; elsewhere (a container,
//! this project's VM) the test does what systemd would: runs ExecStart
//! with the unit's capability bounding set, a notify socket and a watchdog.

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tests::{DEBIAN_PYTHON, ingest::IngestServer, root, workload};

const UNIT: &str = "packaging/tracer.service";

fn tracer_bin() -> String {
    std::env::var("TRACER_BIN").unwrap_or_else(|_| {
        root()
            .join("target/release/tracer")
            .to_string_lossy()
            .into_owned()
    })
}

/// The unit with its binary and configuration at the test's paths.
fn unit_for_test(config: &Path) -> String {
    std::fs::read_to_string(root().join(UNIT))
        .expect("the unit")
        .replace("/usr/local/bin/tracer", &tracer_bin())
        .replace("/etc/tracer/daemon.toml", config.to_str().expect("utf-8"))
}

fn value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{key}= not in the unit"))
}

fn systemd_is_pid1() -> bool {
    Path::new("/run/systemd/system").exists()
}

#[test]
fn the_unit_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tracer.service");
    std::fs::write(&path, unit_for_test(Path::new("/etc/tracer/daemon.toml"))).expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(root().join(UNIT)).expect("unit");
    assert_eq!(value(&unit, "Type"), "notify");
    assert_eq!(value(&unit, "Restart"), "always");
    assert!(value(&unit, "WatchdogSec").parse::<u64>().is_ok());
}

#[test]
fn the_units_daemon_notifies_and_pushes() {
    let server = IngestServer::start();
    let mut service = Command::new(DEBIAN_PYTHON)
        .arg(workload("daemon_exact.py"))
        .arg("60")
        .stdout(Stdio::null())
        .spawn()
        .expect("workload");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "pid = [{}]\ninterval = 1\n[pyroscope]\nurl = \"{}\"\n",
            service.id(),
            server.url()
        ),
    )
    .expect("config");
    let unit = unit_for_test(&config);
    if systemd_is_pid1() {
        let path = Path::new("/run/systemd/system/tracer-test.service");
        std::fs::write(path, &unit).expect("install the unit");
        let ctl = |args: &[&str]| {
            Command::new("systemctl")
                .args(args)
                .status()
                .expect("systemctl")
        };
        assert!(ctl(&["daemon-reload"]).success());
        assert!(
            ctl(&["start", "tracer-test.service"]).success(),
            "systemd could not start the unit"
        );
        server.wait_for("windows pushed", Duration::from_secs(30), |r| r.len() >= 2);
        assert!(ctl(&["stop", "tracer-test.service"]).success());
        let _ = std::fs::remove_file(path);
        let _ = ctl(&["daemon-reload"]);
    } else {
        eprintln!("systemd is not PID 1 here: running ExecStart as systemd would");
        let socket_path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let caps: Vec<String> = value(&unit, "CapabilityBoundingSet")
            .split_whitespace()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        let caps = format!("-all,{}", caps.join(","));
        let exec: Vec<&str> = value(&unit, "ExecStart").split_whitespace().collect();
        let mut daemon = Command::new("setpriv")
            .args(["--bounding-set", &caps, "--inh-caps", &caps, "--"])
            .args(&exec)
            .env("NOTIFY_SOCKET", &socket_path)
            // The unit's WatchdogSec, shortened for the test.
            .env("WATCHDOG_USEC", "2000000")
            .current_dir(dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ExecStart");
        let mut states = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 256];
        while Instant::now() < deadline
            && !(states.iter().any(|s| s == "READY=1")
                && states.iter().filter(|s| *s == "WATCHDOG=1").count() >= 2
                && server.requests().len() >= 2)
        {
            if let Ok(n) = socket.recv(&mut buf) {
                states.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        // SAFETY: kill sends SIGTERM to the daemon this test started.
        unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
        let status = daemon.wait().expect("wait");
        while let Ok(n) = socket.recv(&mut buf) {
            states.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let mut stderr = String::new();
        if let Some(mut e) = daemon.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        assert!(status.success(), "the unit's daemon failed: {stderr}");
        assert!(
            states.iter().any(|s| s == "READY=1"),
            "no READY=1: {states:?}\n{stderr}"
        );
        assert!(
            states.iter().filter(|s| *s == "WATCHDOG=1").count() >= 2,
            "the watchdog was not pinged: {states:?}"
        );
        assert!(states.iter().any(|s| s == "STOPPING=1"), "{states:?}");
    }
    let _ = service.kill();
    let _ = service.wait();
    let pushed = server.requests();
    assert!(pushed.len() >= 2, "windows pushed: {}", pushed.len());
    assert!(pushed.iter().all(|r| r["status"] == 200), "{pushed:#?}");
}
