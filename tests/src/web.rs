//! The pre-fork web server the gunicorn test and the bench run: Flask and
//! gunicorn in the virtual environment of Debian's python3.11 that `cargo
//! xtask` makes (tests/cache/web-venv), reached over loopback.

use std::{
    net::TcpStream,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use crate::test_cache;

fn venv() -> PathBuf {
    test_cache().join("web-venv")
}

/// The environment's python, with Flask and gunicorn importable.
pub fn venv_python() -> PathBuf {
    let python = venv().join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: `cargo xtask test` (and `bench`) installs Flask and gunicorn",
        python.display()
    );
    python
}

/// The environment's site-packages: on `PYTHONPATH`, another interpreter
/// runs Flask and gunicorn from it (both are pure Python; MarkupSafe falls
/// back to Python).
pub fn site_packages() -> PathBuf {
    venv().join("lib/python3.11/site-packages")
}

/// Whether something listens on loopback `port` within `timeout`.
pub fn listening_within(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
    true
}
