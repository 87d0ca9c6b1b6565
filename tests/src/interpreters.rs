//! The interpreters and C libraries the tests run: pyenv's CPythons,
//! Debian's python3.11, and Debian's newer CPythons unpacked into the
//! tests' cache with their own glibc; which glibc each runs on.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::root;

/// Debian's python3.11: libpython linked into the executable, stripped, LTO,
/// no frame pointers.
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";

/// A pyenv CPython (shared libpython, unstripped).
pub fn pyenv_python(version: &str) -> PathBuf {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    let dir = root.join("versions").join(version).join("bin");
    let minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    let python = dir.join(format!("python{minor}"));
    assert!(python.exists(), "{} is missing", python.display());
    python
}

/// A CPython build the tests run.
#[derive(Clone, Debug)]
pub struct Interpreter {
    pub name: &'static str,
    pub path: PathBuf,
    /// Debian's LTO builds inline the object allocator into its callers.
    pub lto: bool,
}

impl Interpreter {
    /// Its CPython minor version, from its name ("sid-3.15" -> 15).
    pub fn minor(&self) -> u8 {
        self.name
            .rsplit_once("3.")
            .and_then(|(_, minor)| minor.parse().ok())
            .expect("interpreter names end with their version")
    }

    /// What `bytearray(n)` allocates: n + 1 bytes, or from 3.15 (whose
    /// bytearray keeps its bytes in a bytes object) n + 33.
    pub fn bytearray_bytes(&self, n: u64) -> u64 {
        if self.minor() >= 15 { n + 33 } else { n + 1 }
    }
}

/// What `cargo xtask` fetched for the tests (and the bench): the Debian
/// interpreters this machine does not have, virtual environments, the
/// exports' readers.
pub fn test_cache() -> PathBuf {
    std::env::var_os("TRACER_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("tests/cache"))
}

/// Debian's build of CPython `version` from `suite`, unpacked by `cargo
/// xtask` with its own glibc.
pub fn debian_unpacked(suite: &str, version: &str) -> PathBuf {
    let python = unpacked_root(&format!("{suite}-{version}"))
        .join(format!("usr/bin/python{version}-private"));
    assert!(
        python.exists(),
        "{} is missing: `cargo xtask test` fetches it (a test that cannot get its interpreter fails)",
        python.display()
    );
    python
}

/// A program built on this machine, and copies of it that run with the
/// glibc of another Debian.
#[derive(Clone, Debug)]
pub struct GlibcBuild {
    /// "glibc 2.41 (trixie)", its version read from the libc itself.
    pub glibc: String,
    pub program: PathBuf,
    /// Whether its libc's static functions (`__libc_start_call_main`, where
    /// stacks end) have names: this machine has libc6-dbg, the unpacked
    /// trees have no debug files.
    pub libc_symbols: bool,
}

/// A glibc the C tests run against, and the oldest version of it they are
/// meant for (the suites are not pinned: sid moves on).
struct GlibcSource {
    suite: &'static str,
    /// The tree `cargo xtask` unpacks it into (`<suite>-<python
    /// version>-root`), or `None` for this machine's.
    tree: Option<&'static str>,
    at_least: GlibcVersion,
}

/// The glibc builds the C tests run against: this machine's (Debian 12,
/// 2.36) and those unpacked by `cargo xtask` (trixie's 2.41, sid's 2.42 or
/// newer: the entry blocks that start with a test and a branch).
const GLIBCS: [GlibcSource; 3] = [
    GlibcSource {
        suite: "bookworm",
        tree: None,
        at_least: GlibcVersion(2, 36),
    },
    GlibcSource {
        suite: "trixie",
        tree: Some("trixie-3.13"),
        at_least: GlibcVersion(2, 41),
    },
    GlibcSource {
        suite: "sid",
        tree: Some("sid-3.15"),
        at_least: GlibcVersion(2, 42),
    },
];

/// A glibc release, major and minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GlibcVersion(pub u32, pub u32);

impl std::fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// The release of the libc at `libc`, from its banner ("... stable release
/// version 2.43.").
pub fn glibc_version(libc: &Path) -> GlibcVersion {
    let bytes = std::fs::read(libc).unwrap_or_else(|e| panic!("read {}: {e}", libc.display()));
    let banner = b"release version ";
    let at = bytes
        .windows(banner.len())
        .position(|w| w == banner)
        .unwrap_or_else(|| panic!("no release banner in {}", libc.display()));
    let rest = &bytes[at + banner.len()..];
    let text: String = rest
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .map(|&b| char::from(b))
        .collect();
    let mut parts = text.split('.').filter_map(|p| p.parse().ok());
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => GlibcVersion(major, minor),
        _ => panic!("bad release banner in {}: {text}", libc.display()),
    }
}

/// A tree `cargo xtask` unpacked (`<suite>-<python version>`).
fn unpacked_root(tree: &str) -> PathBuf {
    test_cache().join(format!("{tree}-root"))
}

/// Where an unpacked tree keeps its libraries, libc among them.
const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";

/// The glibc unpacked beside Debian `suite`'s CPython `version`.
pub fn unpacked_glibc(suite: &str, version: &str) -> GlibcVersion {
    glibc_version(
        &unpacked_root(&format!("{suite}-{version}"))
            .join(LIB_DIR)
            .join("libc.so.6"),
    )
}

/// The libc this machine's programs run with.
const HOST_LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

/// `program` as it is, and a copy beside it for each unpacked glibc,
/// pointed at that tree's loader and libc with patchelf, as the
/// interpreters are.
pub fn glibc_builds(program: &Path) -> Vec<GlibcBuild> {
    GLIBCS
        .iter()
        .map(|source| {
            let root = source.tree.map(unpacked_root);
            let libc = root.as_ref().map_or_else(
                || PathBuf::from(HOST_LIBC),
                |root| root.join(LIB_DIR).join("libc.so.6"),
            );
            let version = glibc_version(&libc);
            assert!(
                version >= source.at_least,
                "{}: glibc {version}, the C tests are for {} or newer",
                libc.display(),
                source.at_least
            );
            let glibc = format!("glibc {version} ({})", source.suite);
            let Some(root) = root else {
                return GlibcBuild {
                    glibc,
                    program: program.to_path_buf(),
                    libc_symbols: true,
                };
            };
            let loader = root.join("usr/lib64/ld-linux-x86-64.so.2");
            assert!(
                loader.exists(),
                "{} is missing: `cargo xtask test` fetches it",
                loader.display()
            );
            let mut copy = program.as_os_str().to_owned();
            copy.push(format!("-{}", source.suite));
            let copy = PathBuf::from(copy);
            std::fs::copy(program, &copy).expect("copy the program");
            let status = Command::new("patchelf")
                .arg("--set-interpreter")
                .arg(&loader)
                .arg("--set-rpath")
                .arg(root.join(LIB_DIR))
                .arg(&copy)
                .status()
                .expect("run patchelf");
            assert!(status.success(), "patchelf failed on {}", copy.display());
            GlibcBuild {
                glibc,
                program: copy,
                libc_symbols: false,
            }
        })
        .collect()
}

/// Every interpreter of the matrix: pyenv's 3.8 to 3.13 (shared libpython,
/// unstripped) and Debian's 3.11, 3.13, 3.14 and 3.15 (static libpython,
/// stripped, LTO; the last three with their own glibc).
pub fn interpreters() -> Vec<Interpreter> {
    let pyenv = |name, version| Interpreter {
        name,
        path: pyenv_python(version),
        lto: false,
    };
    vec![
        pyenv("pyenv-3.8", "3.8.18"),
        pyenv("pyenv-3.9", "3.9.18"),
        pyenv("pyenv-3.10", "3.10.13"),
        pyenv("pyenv-3.11", "3.11.7"),
        pyenv("pyenv-3.12", "3.12.1"),
        pyenv("pyenv-3.13", "3.13.0"),
        Interpreter {
            name: "debian-3.11",
            path: PathBuf::from(DEBIAN_PYTHON),
            lto: true,
        },
        Interpreter {
            name: "trixie-3.13",
            path: debian_unpacked("trixie", "3.13"),
            lto: true,
        },
        Interpreter {
            name: "sid-3.14",
            path: debian_unpacked("sid", "3.14"),
            lto: true,
        },
        Interpreter {
            name: "sid-3.15",
            path: debian_unpacked("sid", "3.15"),
            lto: true,
        },
    ]
}
