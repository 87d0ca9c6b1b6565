//! The official Pyroscope Python client, from PyPI, in virtual environments
//! of Debian's python3.11 under tests/cache: the ingestion test server is
//! checked against what it sends. 1.x pushes to Pyroscope's connect API;
//! 0.8 pushes pprof to /ingest, the endpoint tracer pushes to.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::check;

const PYTHON: &str = "/usr/bin/python3.11";

/// (directory under the test cache, pinned requirement).
pub const CLIENTS: [(&str, &str); 2] = [
    ("pyroscope-venv", "pyroscope-io==1.4.0"),
    ("pyroscope-0.8-venv", "pyroscope-io==0.8.16"),
];

/// The environment holds the pinned version, and it imports: a changed pin
/// rebuilds it.
fn ready(venv: &Path, requirement: &str) -> bool {
    let Some((_, version)) = requirement.split_once("==") else {
        return false;
    };
    Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import sys, importlib.metadata as m, pyroscope; \
             sys.exit(m.version('pyroscope-io') != sys.argv[1])",
            version,
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Makes sure each environment exists with its client.
pub fn ensure(cache: &Path) -> Result<()> {
    for (dir, requirement) in CLIENTS {
        let venv = cache.join(dir);
        if ready(&venv, requirement) {
            continue;
        }
        eprintln!("xtask: installing {requirement} into {}", venv.display());
        check(
            Command::new(PYTHON)
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
        )
        .context("creating a virtual environment for pyroscope-io")?;
        check(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ]))
        .with_context(|| format!("installing {requirement} from PyPI"))?;
    }
    Ok(())
}
