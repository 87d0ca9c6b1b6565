//! The independent readers the report tests check tracer's exports with,
//! so that no export is judged by the code that wrote it: pprof's own
//! `profile.proto` (compiled for Python's protobuf package), speedscope's
//! published JSON schema, and inferno's command-line flamegraph tool.
//! protoc, python3-protobuf, python3-jsonschema and chromium are Debian
//! packages (see `DEBIAN_PACKAGES`).

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::{cargo_install, check};

/// Debian's package of github.com/google/pprof: its `proto/profile.proto`
/// is the format's definition.
const PPROF_PACKAGE: &str = "golang-github-google-pprof-dev";
const PPROF_PROTO: &str = "usr/share/gocode/src/github.com/google/pprof/proto/profile.proto";
/// speedscope's npm package ships the file format's JSON schema.
const SPEEDSCOPE: &str = "speedscope@1.25.0";
const SPEEDSCOPE_SCHEMA: &str = "package/dist/release/file-format-schema.json";
const INFERNO_VERSION: &str = "0.12.8";

pub fn ensure(cache: &Path) -> Result<()> {
    let pprof = cache.join("pprof");
    if !pprof.join("profile_pb2.py").exists() {
        eprintln!("xtask: fetching pprof's profile.proto ({PPROF_PACKAGE})");
        fetch_profile_proto(&pprof).context("fetching pprof's profile.proto")?;
    }
    let speedscope = cache.join("speedscope");
    if !speedscope.join("file-format-schema.json").exists() {
        eprintln!("xtask: fetching speedscope's file format schema ({SPEEDSCOPE})");
        fetch_speedscope_schema(&speedscope).context("fetching speedscope's schema")?;
    }
    cargo_install("inferno", INFERNO_VERSION)
}

fn fresh_dir(dir: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// The file of `dir` named `*.extension`, if there is one.
fn file_ending(dir: &Path, extension: &str) -> Option<std::path::PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == extension))
}

fn fetch_profile_proto(dest: &Path) -> Result<()> {
    let work = dest.with_extension("download");
    fresh_dir(&work)?;
    // The package lists of a fresh image may be stale: refresh once.
    let download = || {
        Command::new("apt-get")
            .args(["-q", "download", PPROF_PACKAGE])
            .current_dir(&work)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !download() {
        check(Command::new("apt-get").args(["-q", "update"]))?;
        check(
            Command::new("apt-get")
                .args(["-q", "download", PPROF_PACKAGE])
                .current_dir(&work),
        )?;
    }
    let deb = file_ending(&work, "deb").context("apt-get download left no .deb")?;
    let unpacked = work.join("root");
    check(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
    fresh_dir(dest)?;
    fs::copy(unpacked.join(PPROF_PROTO), dest.join("profile.proto"))
        .with_context(|| format!("{PPROF_PROTO} is not in {}", deb.display()))?;
    check(
        Command::new("protoc")
            .arg("--proto_path")
            .arg(dest)
            .arg("--python_out")
            .arg(dest)
            .arg(dest.join("profile.proto")),
    )?;
    fs::remove_dir_all(&work)?;
    Ok(())
}

fn fetch_speedscope_schema(dest: &Path) -> Result<()> {
    let work = dest.with_extension("download");
    fresh_dir(&work)?;
    check(
        Command::new("npm")
            .args(["pack", "--silent", SPEEDSCOPE])
            .current_dir(&work),
    )?;
    let tarball = file_ending(&work, "tgz").context("npm pack left no tarball")?;
    check(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&work)
            .arg(SPEEDSCOPE_SCHEMA),
    )?;
    fresh_dir(dest)?;
    fs::copy(
        work.join(SPEEDSCOPE_SCHEMA),
        dest.join("file-format-schema.json"),
    )?;
    fs::remove_dir_all(&work)?;
    Ok(())
}
