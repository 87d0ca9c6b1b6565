//! Debian's CPython 3.13 (trixie), 3.14 and 3.15 (sid), each unpacked with
//! its own glibc into `tests/cache/<suite>-<version>-root` for the
//! end-to-end tests: Debian's builds (libpython linked in, stripped, LTO) of
//! versions this machine does not have, each mapping its own libc as a
//! process in a container does. One tree per version, so that a version
//! sid drops keeps working from the cache.
//!
//! A private apt configuration (isolated from /etc/apt) downloads the
//! packages, verified against Debian's archive keyring; `dpkg -x` unpacks
//! them; a copy of the interpreter is pointed at the private loader and
//! libraries with patchelf (an RPATH, so that extension modules' own
//! dependencies come from the private tree too).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::check;

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A Debian build of CPython the tests run.
pub struct Build {
    pub suite: &'static str,
    pub version: &'static str,
}

pub const BUILDS: [Build; 3] = [
    Build {
        suite: "trixie",
        version: "3.13",
    },
    Build {
        suite: "sid",
        version: "3.14",
    },
    Build {
        suite: "sid",
        version: "3.15",
    },
];

/// Libraries the interpreter and its standard extension modules link.
const LIBS: [&str; 15] = [
    "libc6",
    "libgcc-s1",
    "libexpat1",
    "zlib1g",
    "libssl3t64",
    "libzstd1",
    "libffi8",
    "libbz2-1.0",
    "liblzma5",
    "libsqlite3-0",
    "libuuid1",
    "libncursesw6",
    "libtinfo6",
    "libreadline8t64",
    "libdb5.3t64",
];

impl Build {
    /// Where it is unpacked under `cache`.
    fn root(&self, cache: &Path) -> PathBuf {
        cache.join(format!("{}-{}-root", self.suite, self.version))
    }

    /// Its runnable interpreter under `cache`.
    pub fn interpreter(&self, cache: &Path) -> PathBuf {
        self.root(cache)
            .join(format!("usr/bin/python{}-private", self.version))
    }
}

fn runs(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import sys, json, hashlib, threading"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Makes sure every build's interpreter is unpacked and runs.
pub fn ensure(cache: &Path) -> Result<()> {
    for build in &BUILDS {
        let Build { suite, version } = build;
        if !runs(&build.interpreter(cache)) {
            eprintln!(
                "xtask: fetching Debian {suite}'s CPython {version} into {}",
                cache.display()
            );
            fetch(cache, build)
                .with_context(|| format!("fetching CPython {version} from Debian {suite}"))?;
        }
    }
    Ok(())
}

fn fetch(cache: &Path, build: &Build) -> Result<()> {
    let Build { suite, version } = build;
    let dest = cache.join(format!("apt-{suite}"));
    let empty = dest.join("empty");
    let debs = dest.join("debs");
    for dir in [
        dest.join("lists/partial"),
        dest.join("cache/archives/partial"),
        dest.join("state"),
        debs.clone(),
        empty.clone(),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let status = dest.join("state/status");
    if !status.exists() {
        fs::write(&status, "")?;
    }
    let list = dest.join("sources.list");
    fs::write(
        &list,
        format!("deb [signed-by={KEYRING}] {MIRROR} {suite} main\n"),
    )?;
    let d = |p: &Path| p.display().to_string();
    let conf = dest.join("apt.conf");
    fs::write(
        &conf,
        format!(
            r#"Dir::Etc::main "/dev/null";
Dir::Etc::parts "{empty}";
Dir::Etc::sourcelist "{list}";
Dir::Etc::sourceparts "{empty}";
Dir::Etc::preferences "/dev/null";
Dir::Etc::preferencesparts "{empty}";
Dir::State "{state}";
Dir::State::lists "{lists}";
Dir::State::status "{status}";
Dir::Cache "{cache}";
APT::Architecture "amd64";
APT::Architectures {{ "amd64"; }};
Acquire::Languages "none";
// sid's Release file on the mirror can be past its Valid-Until date; its
// signature is still checked.
Acquire::Check-Valid-Until "false";
"#,
            empty = d(&empty),
            list = d(&list),
            state = d(&dest.join("state")),
            lists = d(&dest.join("lists")),
            status = d(&status),
            cache = d(&dest.join("cache")),
        ),
    )?;
    let apt = |dir: &Path| {
        let mut cmd = Command::new("apt-get");
        cmd.env("APT_CONFIG", &conf).current_dir(dir).arg("-q");
        cmd
    };
    check(apt(&dest).arg("update"))?;
    let mut packages = vec![
        format!("python{version}-minimal"),
        format!("libpython{version}-minimal"),
        format!("libpython{version}-stdlib"),
        format!("python{version}-dbg"),
    ];
    packages.extend(LIBS.iter().map(|s| s.to_string()));
    // The file names, from a folder where none is downloaded yet.
    let uris = apt(&empty)
        .args(["--print-uris", "download"])
        .args(&packages)
        .output()
        .context("apt-get --print-uris")?;
    if !uris.status.success() {
        bail!(
            "apt-get --print-uris download failed: {}",
            String::from_utf8_lossy(&uris.stderr)
        );
    }
    let files: Vec<String> = String::from_utf8_lossy(&uris.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    // apt drops privileges to _apt for downloads where it can.
    let _ = Command::new("chown").arg("_apt").arg(&debs).status();
    check(apt(&debs).arg("download").args(&packages))?;

    let root = build.root(cache);
    let staging = cache.join(format!("{suite}-{version}-root.new"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    let dbg_prefix = format!("python{version}-dbg_");
    for file in &files {
        let deb = debs.join(file);
        if file.starts_with(&dbg_prefix) {
            continue;
        }
        check(Command::new("dpkg").arg("-x").arg(&deb).arg(&staging))?;
    }
    // Only the interpreter's own debug file, found by its build id.
    let original = staging.join(format!("usr/bin/python{version}"));
    let notes = Command::new("readelf").arg("-n").arg(&original).output()?;
    let build_id = String::from_utf8_lossy(&notes.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned))
        .context("the interpreter has no build id")?;
    let (dir, rest) = build_id.split_at(2);
    let member = format!("./usr/lib/debug/.build-id/{dir}/{rest}.debug");
    if let Some(dbg) = files.iter().find(|f| f.starts_with(&dbg_prefix)) {
        let script = format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' '{member}'",
            debs.join(dbg).display(),
            staging.display()
        );
        check(Command::new("sh").args(["-c", &script]))?;
    }
    let private = staging.join(format!("usr/bin/python{version}-private"));
    fs::copy(&original, &private)?;
    check(
        Command::new("patchelf")
            .arg("--set-interpreter")
            .arg(root.join("usr/lib64/ld-linux-x86-64.so.2"))
            .arg("--force-rpath")
            .arg("--set-rpath")
            .arg(root.join("usr/lib/x86_64-linux-gnu"))
            .arg(&private),
    )?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&staging, &root)?;
    let python = build.interpreter(cache);
    if !runs(&python) {
        bail!("{} does not run", python.display());
    }
    Ok(())
}
