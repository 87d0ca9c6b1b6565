//! Project tasks: `cargo xtask setup|build|run|test|bench|soak|soak-record`.
//!
//! Every task installs what it needs first (idempotently): the pinned
//! nightly with rust-src, bpf-linker, and the Debian packages the tests use.
//! A second run finds everything in place and does nothing. `bench`,
//! `soak` and `soak-record` then run the bench crate (bench/), which
//! measures.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod bench_tools;
mod fuzz;
mod interpreters;
mod pyroscope;
mod validators;
mod web;

/// Where the tests' fetched interpreters are unpacked (git-ignored).
const TEST_CACHE: &str = "tests/cache";
/// What only the bench uses: memray, merged kernel headers (git-ignored).
const BENCH_CACHE: &str = "bench/cache";

/// bpf-linker release known to work with the pinned nightly (it loads the
/// nightly's own libLLVM).
const BPF_LINKER_VERSION: &str = "0.10.4";
/// Runs the capture reader's fuzz targets (on the pinned nightly).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Debian packages: `bpftool` lists loaded programs in the detach test,
/// `gcc` builds the C test programs, `patchelf` points unpacked interpreters
/// at their own glibc, `python3.11-dbg` carries the debug symbols of
/// Debian's stripped python3.11 (found by build-id); the report tests read
/// tracer's exports with chromium, protoc and python3-protobuf (pprof),
/// golang-go (`go tool pprof`), python3-jsonschema (speedscope), and npm
/// fetches speedscope's schema; python3.11-venv holds the Flask and
/// gunicorn server of the pre-fork tests, which wrk loads, and of the
/// pyroscope-io clients; `tracer top`'s test drives it in tmux;
/// `systemd-analyze verify` checks the daemon's unit (minimal images and
/// containers ship without systemd).
const DEBIAN_PACKAGES: [(&str, &str); 14] = [
    ("bpftool", "/usr/sbin/bpftool"),
    ("gcc", "/usr/bin/gcc"),
    ("patchelf", "/usr/bin/patchelf"),
    ("python3.11-dbg", "/usr/bin/python3.11-dbg"),
    ("chromium", "/usr/bin/chromium"),
    ("protobuf-compiler", "/usr/bin/protoc"),
    (
        "python3-protobuf",
        "/usr/lib/python3/dist-packages/google/protobuf/__init__.py",
    ),
    (
        "python3-jsonschema",
        "/usr/lib/python3/dist-packages/jsonschema/__init__.py",
    ),
    ("npm", "/usr/bin/npm"),
    ("golang-go", "/usr/bin/go"),
    (
        "python3.11-venv",
        "/usr/lib/python3.11/ensurepip/__init__.py",
    ),
    ("wrk", "/usr/bin/wrk"),
    ("tmux", "/usr/bin/tmux"),
    ("systemd", "/usr/bin/systemd-analyze"),
];

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain and packages that are missing.
    Setup,
    /// Build tracer (and its eBPF programs) in release mode.
    Build,
    /// Build, then run tracer as root. Without arguments: record the demo
    /// workload, `record -- python3 tests/workloads/demo_service.py`.
    Run {
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Lint, unit tests, then end-to-end tests with the real eBPF programs
    /// (as root; fails rather than skips without it).
    Test {
        /// Extra arguments for the test harness, e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Measure what tracing costs (as root): every workload in
    /// bench/workloads untraced, under tracer's modes, bpftrace, bcc's
    /// memleak and memray. Prints a Markdown table and writes
    /// bench/results/latest.json. Not part of `test`.
    Bench {
        /// A smoke test in under 3 minutes: one round of smaller workloads,
        /// whose ratios do not predict the full run's.
        #[arg(long)]
        quick: bool,
        /// Rounds of every mode (default 5; 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Only these workloads (churn, requests, buffers, leak, threads,
        /// maxrate, spawn, flask).
        workloads: Vec<String>,
    },
    /// Run `tracer daemon --all` for 30 minutes (as root) against Python
    /// services that come and go, pushing every 5 s to the test ingestion
    /// server; check that its memory, descriptors and spool stay flat.
    /// Not part of `test`.
    Soak {
        /// Minutes to run (default 30).
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Trace only the CPython processes whose command line matches
        /// (tracer's `--match`) instead of every one: on a machine shared
        /// with other work, the soak's own services (`soak_service`).
        #[arg(long, value_name = "REGEX")]
        r#match: Option<String>,
    },
    /// `tracer record --all` on a steady workload with churn (as root),
    /// tracer's RSS and descriptors sampled every minute: after 5 minutes
    /// they must stay within 10%. Not part of `test`.
    SoakRecord {
        /// How long to record.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    let root = workspace_root()?;
    env::set_current_dir(&root)?;
    match task {
        Task::Setup => {
            setup()?;
            if is_root() {
                interpreters::ensure(&root.join(TEST_CACHE))?;
                validators::ensure(&root.join(TEST_CACHE))?;
                web::ensure(&root.join(TEST_CACHE))?;
                pyroscope::ensure(&root.join(TEST_CACHE))?;
            }
            Ok(())
        }
        Task::Build => {
            setup()?;
            build()
        }
        Task::Run { args } => {
            setup()?;
            build()?;
            let args = if args.is_empty() {
                ["record", "--", "python3", "tests/workloads/demo_service.py"]
                    .map(OsString::from)
                    .to_vec()
            } else {
                args
            };
            let tracer = root.join("target/release/tracer");
            let mut cmd = as_root(&tracer);
            cmd.args(&args);
            let status = cmd.status().context("running tracer")?;
            if !status.success() {
                bail!("tracer {status}");
            }
            Ok(())
        }
        Task::Test { args } => {
            setup()?;
            test(&root, &args)
        }
        Task::Soak { minutes, r#match } => {
            if !is_root() {
                bail!(
                    "the soak loads eBPF programs and needs root: run `sudo -E env PATH=\"$PATH\" cargo xtask soak`"
                );
            }
            setup()?;
            validators::ensure(&root.join(TEST_CACHE))?;
            build()?;
            let mut args = vec![
                "soak".into(),
                "--minutes".into(),
                minutes.to_string().into(),
            ];
            if let Some(regex) = r#match {
                args.extend(["--match".into(), regex.into()]);
            }
            bench(&args)
        }
        Task::Bench {
            quick,
            rounds,
            workloads,
        } => {
            if !is_root() {
                bail!(
                    "the benchmark loads eBPF programs and needs root: run `sudo -E env PATH=\"$PATH\" cargo xtask bench`"
                );
            }
            setup()?;
            bench_tools::ensure(&root.join(BENCH_CACHE))?;
            web::ensure(&root.join(TEST_CACHE))?;
            interpreters::ensure(&root.join(TEST_CACHE))?;
            build()?;
            let mut args: Vec<OsString> = vec!["overhead".into()];
            if quick {
                args.push("--quick".into());
            }
            if let Some(rounds) = rounds {
                args.extend(["--rounds".into(), rounds.to_string().into()]);
            }
            args.extend(workloads.into_iter().map(OsString::from));
            bench(&args)
        }
        Task::SoakRecord { minutes } => {
            if !is_root() {
                bail!(
                    "the soak loads eBPF programs and needs root: run `sudo -E env PATH=\"$PATH\" cargo xtask soak-record`"
                );
            }
            setup()?;
            build()?;
            bench(&[
                "soak-record".into(),
                "--minutes".into(),
                minutes.to_string().into(),
            ])
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = env::var_os("CARGO_MANIFEST_DIR").context("run this through `cargo xtask`")?;
    Ok(Path::new(&manifest)
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}

fn nightly() -> Result<String> {
    let text = std::fs::read_to_string("tracer-ebpf/toolchain")
        .context("reading tracer-ebpf/toolchain")?;
    Ok(text.trim().to_owned())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command that runs `program` as root: directly when already root,
/// else through sudo keeping the environment (cargo, rustup paths).
fn as_root(program: &Path) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(program);
        cmd
    }
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

fn output(cmd: &mut Command) -> Option<String> {
    let o = cmd.output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

pub(crate) fn check(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Installs `krate` at `version` with `cargo install` unless cargo lists it.
pub(crate) fn cargo_install(krate: &str, version: &str) -> Result<()> {
    let installed = output(Command::new("cargo").args(["install", "--list"])).unwrap_or_default();
    if installed.contains(&format!("{krate} v{version}:")) {
        return Ok(());
    }
    eprintln!("xtask: installing {krate} {version}");
    check(Command::new("cargo").args([
        "install",
        &format!("{krate}@{version}"),
        "--locked",
        "--force",
    ]))
}

fn setup() -> Result<()> {
    let toolchain = nightly()?;
    // rust-src builds core for the BPF target; clippy lints the eBPF crate.
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        &toolchain,
    ]))
    .unwrap_or_default();
    let missing: Vec<&str> = ["rust-src", "clippy"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "xtask: installing Rust {toolchain} with {} (for the eBPF programs)",
            missing.join(", ")
        );
        let mut cmd = Command::new("rustup");
        cmd.args(["toolchain", "install", &toolchain, "--profile", "minimal"]);
        for c in &missing {
            cmd.args(["--component", c]);
        }
        check(&mut cmd)?;
    }
    cargo_install("bpf-linker", BPF_LINKER_VERSION)?;
    cargo_install("cargo-fuzz", CARGO_FUZZ_VERSION)?;
    apt_install(&DEBIAN_PACKAGES)
}

/// Installs the Debian packages (name, a file it installs) that are missing.
pub(crate) fn apt_install(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, path)| !Path::new(path).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
        let apt = |args: &[&str]| {
            let mut cmd = as_root(Path::new("apt-get"));
            cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            cmd
        };
        // The package lists of a fresh image may be stale: refresh once.
        if !succeeds(apt(&["install", "-y", "-q"]).args(&missing)) {
            check(&mut apt(&["update", "-q"]))?;
            check(apt(&["install", "-y", "-q"]).args(&missing))?;
        }
    }
    Ok(())
}

fn build() -> Result<()> {
    check(Command::new("cargo").args(["build", "--release", "--package", "tracer"]))
}

/// Builds and runs the bench crate's binary (bench/src/main.rs) with
/// `args`, once tracer is built and what it needs installed.
fn bench(args: &[OsString]) -> Result<()> {
    check(
        Command::new("cargo")
            .args(["run", "--release", "--package", "bench", "--"])
            .args(args),
    )
}

fn test(root: &Path, harness_args: &[OsString]) -> Result<()> {
    if !is_root() {
        bail!(
            "the end-to-end tests load eBPF programs and need root: run `sudo -E env PATH=\"$PATH\" cargo xtask test`"
        );
    }
    interpreters::ensure(&root.join(TEST_CACHE))?;
    validators::ensure(&root.join(TEST_CACHE))?;
    web::ensure(&root.join(TEST_CACHE))?;
    pyroscope::ensure(&root.join(TEST_CACHE))?;
    check(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    check(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    check(
        Command::new("rustup")
            .args(["run", &nightly()?, "cargo", "clippy"])
            .args([
                "--package",
                "tracer-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
                "--",
                "-D",
                "warnings",
            ]),
    )?;
    build()?;
    // Unit tests of every crate; the end-to-end tests run next, one at a
    // time (they measure whole processes on a 2-core machine).
    check(Command::new("cargo").args([
        "test",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--exclude",
        "tests",
    ]))?;
    let mut e2e = Command::new("cargo");
    e2e.args(["test", "--package", "tests", "--", "--test-threads=1"])
        .args(harness_args)
        .env("TRACER_BIN", root.join("target/release/tracer"))
        .env("TRACER_TEST_CACHE", root.join(TEST_CACHE));
    check(&mut e2e)?;
    // A filtered run is someone's quick check, not the whole suite.
    if harness_args.is_empty() {
        fuzz::run(root, &nightly()?)?;
    }
    Ok(())
}
