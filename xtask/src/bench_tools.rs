//! What `cargo xtask bench` installs for the bench crate (bench/) to
//! compare tracer with: bpftrace and bcc's memleak (Debian), the kernel
//! headers bcc compiles against, and memray in a virtual environment, the
//! last two under bench/cache, where the bench finds them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{apt_install, check};

const PYTHON: &str = "/usr/bin/python3.11";

const MEMRAY_VERSION: &str = "1.20.0";

/// bpftrace and bcc's memleak; bcc compiles its programs against kernel
/// headers, which this machine's kernel does not ship: Debian's (any
/// version: memleak only needs uapi and pt_regs) are merged into the cache.
const BENCH_PACKAGES: [(&str, &str); 3] = [
    ("bpftrace", "/usr/bin/bpftrace"),
    ("bpfcc-tools", "/usr/sbin/memleak-bpfcc"),
    ("linux-headers-amd64", "/usr/share/doc/linux-headers-amd64"),
];

/// Makes sure the packages, the merged headers (`cache/kernel-headers`)
/// and memray (`cache/memray`) are in place.
pub fn ensure(cache: &Path) -> Result<()> {
    apt_install(&BENCH_PACKAGES)?;
    let headers = cache.join("kernel-headers");
    if !headers.join("include/linux/kconfig.h").exists() {
        eprintln!("xtask: merging Debian's kernel headers for bcc");
        merge_kernel_headers(&headers)?;
    }
    let memray = cache.join("memray/bin/memray");
    let installed = Command::new(&memray)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(MEMRAY_VERSION));
    if !installed {
        eprintln!("xtask: installing memray {MEMRAY_VERSION} into a venv");
        let venv = cache.join("memray");
        check(Command::new(PYTHON).args(["-m", "venv"]).arg(&venv))?;
        check(
            Command::new(venv.join("bin/pip"))
                .args(["install", "-q"])
                .arg(format!("memray=={MEMRAY_VERSION}")),
        )?;
    }
    Ok(())
}

/// Debian splits a kernel's headers into an arch tree (generated files)
/// and a common tree; bcc wants one tree.
fn merge_kernel_headers(dest: &Path) -> Result<()> {
    let trees: Vec<PathBuf> = fs::read_dir("/usr/src")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("linux-headers-"))
        })
        .collect();
    let common = trees
        .iter()
        .filter(|p| p.to_string_lossy().ends_with("-common"))
        .max()
        .context("no linux-headers-*-common under /usr/src")?;
    let prefix = common
        .to_string_lossy()
        .trim_end_matches("-common")
        .to_owned();
    let arch = trees
        .iter()
        .find(|p| p.to_string_lossy() == format!("{prefix}-amd64"))
        .with_context(|| format!("no {prefix}-amd64 beside {}", common.display()))?;
    let _ = fs::remove_dir_all(dest);
    fs::create_dir_all(dest)?;
    for tree in [common, arch] {
        check(Command::new("cp").arg("-a").arg(tree.join(".")).arg(dest))?;
    }
    Ok(())
}
