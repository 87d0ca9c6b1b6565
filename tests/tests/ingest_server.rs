//! The daemon tests' ingestion server checked against the real thing: the
//! official Pyroscope Python client (pyroscope-io from PyPI, installed by
//! `cargo xtask`) pushes to it, 0.8 to /ingest with format=pprof (the
//! endpoint tracer uses) and 1.x to the connect push API, and every push
//! must be taken and decoded; what Pyroscope and Parca refuse, it refuses.

use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::json;
use tests::{
    ingest::{IngestServer, http},
    test_cache,
};

fn venv(dir: &str) -> PathBuf {
    let python = test_cache().join(dir).join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: `cargo xtask test` installs pyroscope-io",
        python.display()
    );
    python
}

/// Runs the client for a few seconds of CPU work, pushing to `server`.
fn client(python: &PathBuf, server: &IngestServer) {
    let script = format!(
        r#"
import time, pyroscope
pyroscope.configure(application_name="checkapp", server_address="{}", tags={{"region": "eu"}})
end = time.time() + 12
x = 0
while time.time() < end:
    x += sum(i * i for i in range(1000))
pyroscope.shutdown()
"#,
        server.url()
    );
    let out = Command::new(python)
        .args(["-c", &script])
        .output()
        .expect("run the pyroscope client");
    assert!(
        out.status.success(),
        "pyroscope client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_pyroscope_clients_pushes_are_all_taken() {
    let server = IngestServer::start();
    client(&venv("pyroscope-0.8-venv"), &server);
    let ingest = server.of_kind("pyroscope-ingest");
    assert!(!ingest.is_empty(), "0.8 pushed nothing to /ingest");
    for r in &ingest {
        assert_eq!(r["status"], 200, "{r:#}");
        assert!(
            r["path"]
                .as_str()
                .is_some_and(|p| p.contains("format=pprof"))
        );
        assert_eq!(r["labels"]["service_name"], "checkapp");
        assert_eq!(r["labels"]["__name__"], "process_cpu");
        assert_eq!(r["spy"], "pyspy");
        assert!(r["profile"]["samples"].as_u64().is_some_and(|n| n > 0));
    }
    client(&venv("pyroscope-venv"), &server);
    let push = server.of_kind("pyroscope-push");
    assert!(!push.is_empty(), "1.x pushed nothing to the push API");
    for r in &push {
        assert_eq!(r["status"], 200, "{r:#}");
        let series = &r["series"][0];
        assert_eq!(series["labels"]["service_name"], "checkapp");
        assert_eq!(series["labels"]["region"], "eu");
        assert!(series["profile"]["samples"].as_u64().is_some_and(|n| n > 0));
    }
}

#[test]
fn what_the_backends_refuse_is_refused() {
    let server = IngestServer::start();
    let post = |path: &str, body: &[u8]| http(server.port, "POST", path, body).0;
    // Pyroscope: a service name with a space, a label name with a dash, a
    // body that is no profile.
    assert_eq!(post("/ingest?name=my%20app%7B%7D&format=pprof", b""), 400);
    assert_eq!(
        post("/ingest?name=app%7Bbad-name%3D1%7D&format=pprof", b""),
        400
    );
    assert_eq!(
        post("/ingest?name=app&format=pprof", b"\x1f\x8bnot gzip"),
        400
    );
    // Parca: no __name__, an invalid label name.
    let write_raw = |labels: serde_json::Value| {
        json!({"series": [{"labels": {"labels": labels}, "samples": []}]}).to_string()
    };
    assert_eq!(
        post(
            "/api/profiles/writeraw",
            write_raw(json!([{"name": "a", "value": "b"}])).as_bytes()
        ),
        400
    );
    assert_eq!(
        post(
            "/api/profiles/writeraw",
            write_raw(
                json!([{"name": "__name__", "value": "memory"}, {"name": "a.b", "value": "c"}])
            )
            .as_bytes()
        ),
        400
    );
    assert_eq!(
        post(
            "/api/profiles/writeraw",
            write_raw(json!([{"name": "__name__", "value": "memory"}])).as_bytes()
        ),
        200
    );
    // A forced answer, with its Retry-After, then back to normal.
    server.control(&json!({"status": 429, "retry_after": "3", "count": 1}));
    assert_eq!(
        post(
            "/api/profiles/writeraw",
            write_raw(json!([{"name": "__name__", "value": "memory"}])).as_bytes()
        ),
        429
    );
    server.wait_for("the log", Duration::from_secs(5), |r| r.len() == 7);
}
