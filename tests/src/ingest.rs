//! The loopback ingestion server of the daemon tests
//! (tests/validators/ingest_server.py: Pyroscope's /ingest and push API,
//! Parca's WriteRaw gateway, each profile decoded with pprof's
//! profile.proto), and plain HTTP helpers to drive it and to scrape
//! tracer's /metrics.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{DEBIAN_PYTHON, root, test_cache};

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct IngestServer {
    child: Child,
    pub port: u16,
    log: PathBuf,
    /// The log's directory, when the server was given none.
    _dir: Option<tempfile::TempDir>,
}

impl Drop for IngestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl IngestServer {
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// A server on `port` (0: any free one).
    pub fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("requests.jsonl");
        Self::spawn(port, log, Some(dir))
    }

    /// A server on any free port that logs its requests to `log`, which
    /// stays when it stops (the soak's record of what was pushed).
    pub fn logging_to(log: &Path) -> Self {
        Self::spawn(0, log.to_path_buf(), None)
    }

    fn spawn(port: u16, log: PathBuf, dir: Option<tempfile::TempDir>) -> Self {
        let mut child = Command::new(DEBIAN_PYTHON)
            .arg(root().join("tests/validators/ingest_server.py"))
            .arg("--proto-dir")
            .arg(test_cache().join("pprof"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the ingestion server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the server's port");
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the ingestion server did not start: {line:?}"));
        Self {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far, as the server logged it.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("the server logs JSON lines"))
            .collect()
    }

    /// The requests of one kind ("pyroscope-ingest", "pyroscope-push", "parca").
    pub fn of_kind(&self, kind: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["kind"] == kind)
            .collect()
    }

    /// Tells the server how to answer next (see ingest_server.py).
    pub fn control(&self, how: &Value) {
        let (status, _) = http(self.port, "POST", "/control", how.to_string().as_bytes());
        assert_eq!(status, 200, "the ingestion server took no control");
    }

    /// Waits until `ok` holds for the requests, or panics after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ok(&self.requests()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{what}: not within {timeout:?}; requests: {:#?}",
            self.requests()
        );
    }
}

/// One HTTP/1.1 request on loopback; the status and the body.
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    try_http(port, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path} on port {port}: {e}"))
}

/// `http`, or why the request could not be made (nothing listens yet).
pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A Prometheus text exposition's value of `name{labels}` (labels as
/// written, e.g. `{sink="pyroscope"}`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The decoded profiles of accepted pushes of `kind`, oldest first.
pub fn accepted_profiles(requests: &[Value], kind: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for r in requests
        .iter()
        .filter(|r| r["kind"] == kind && r["status"] == 200)
    {
        match kind {
            "pyroscope-ingest" => out.push(r.clone()),
            _ => {
                for s in r["series"].as_array().into_iter().flatten() {
                    out.push(s.clone());
                }
            }
        }
    }
    out.sort_by_key(|p| p["profile"]["time_nanos"].as_i64().unwrap_or(0));
    out
}

/// A decoded profile's name as the backend keeps it: the `__name__`
/// Pyroscope derives from its sample types, or the one sent to Parca.
pub fn profile_name(p: &Value) -> &str {
    p["labels"]["__name__"]
        .as_str()
        .or(p["name"].as_str())
        .unwrap_or("")
}

/// The profiles named `name` ("memory", "types") of `profiles`.
pub fn named(profiles: Vec<Value>, name: &str) -> Vec<Value> {
    profiles
        .into_iter()
        .filter(|p| profile_name(p) == name)
        .collect()
}

/// A profile's total of one sample type.
pub fn total(p: &Value, sample_type: &str) -> i64 {
    p["profile"]["totals"][sample_type].as_i64().unwrap_or(0)
}
