//! A real pre-fork server for the tests (and the benchmark): Flask on
//! gunicorn, from PyPI, in a virtual environment of Debian's python3.11
//! under `tests/cache/web-venv`; wrk (Debian) drives it over loopback.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::check;

/// Pinned: the tests read gunicorn's worker processes as they are today.
const REQUIREMENTS: [&str; 2] = ["flask==3.1.3", "gunicorn==27.0.1"];
const PYTHON: &str = "/usr/bin/python3.11";

/// The environment's directory under the test cache.
pub const VENV: &str = "web-venv";

fn ready(venv: &Path) -> bool {
    Command::new(venv.join("bin/python"))
        .args(["-c", "import flask, gunicorn"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Makes sure the environment exists with Flask and gunicorn.
pub fn ensure(cache: &Path) -> Result<()> {
    let venv = cache.join(VENV);
    if ready(&venv) {
        return Ok(());
    }
    eprintln!(
        "xtask: installing {} into {}",
        REQUIREMENTS.join(" "),
        venv.display()
    );
    check(
        Command::new(PYTHON)
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )
    .context("creating the web server's virtual environment")?;
    check(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(REQUIREMENTS),
    )
    .context("installing Flask and gunicorn from PyPI")
}
