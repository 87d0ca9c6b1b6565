//! Windows not pushed yet, on disk (`--spool-dir`): one file per window,
//! written whole to a temporary name and renamed, so that a crash leaves
//! whole windows or none, and a restart sends what the last run could not.
//! The directory is tracer's, but what it holds is read as untrusted:
//! regular files only, never through a symlink, sizes bounded, headers
//! checked; anything else is deleted and counted.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use log::warn;
use serde::{Deserialize, Serialize};

use super::{EncodedWindow, ProfileName};
use crate::labels::Labels;

const MAGIC: &[u8; 8] = b"TRWIN001";
/// No window file is larger: a pprof of 16,000 samples is a few MB.
const MAX_FILE: u64 = 64 << 20;
/// The metadata (labels and times) of one window.
const MAX_META: usize = 256 << 10;
const SUFFIX: &str = ".window";

#[derive(Serialize, Deserialize)]
struct Meta {
    /// Windows spooled before there were types profiles are memory ones.
    #[serde(default)]
    profile: ProfileName,
    labels: Labels,
    start_unix_ns: u64,
    end_unix_ns: u64,
}

/// A window in the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spooled {
    pub path: PathBuf,
    pub bytes: u64,
    pub end_unix_ns: u64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    bytes: u64,
    seq: u64,
}

impl Spool {
    /// Opens (creating) `dir`; returns it with the windows already there,
    /// oldest first, and how many unreadable files were removed.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<(Self, Vec<Spooled>, u64)> {
        // Checked as `record -o` checks its directory: not a link, not
        // another user's.
        crate::outputs::OutputDir::create(dir).map_err(io::Error::other)?;
        let mut found = BTreeMap::new();
        let mut bad = 0;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let is_window = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(SUFFIX));
            if !is_window {
                // A temporary file of a write cut short.
                if path.extension().is_some_and(|e| e == "tmp") {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            match read_meta(&path) {
                Ok((meta, bytes)) => {
                    found.insert(
                        path.clone(),
                        Spooled {
                            path,
                            bytes,
                            end_unix_ns: meta.end_unix_ns,
                        },
                    );
                }
                Err(err) => {
                    warn!("spool: removing {}: {err}", path.display());
                    let _ = fs::remove_file(&path);
                    bad += 1;
                }
            }
        }
        let spooled: Vec<Spooled> = found.into_values().collect();
        let spool = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            bytes: spooled.iter().map(|s| s.bytes).sum(),
            seq: 0,
        };
        Ok((spool, spooled, bad))
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether a window of `bytes` fits under the cap now.
    pub fn fits(&self, bytes: u64) -> bool {
        self.bytes + bytes <= self.max_bytes
    }

    /// The size `window` takes on disk.
    pub fn size_of(window: &EncodedWindow) -> u64 {
        // The metadata is small; count it generously.
        (MAGIC.len() + 4 + 1024 + window.body.len()) as u64
    }

    /// Writes `window`; the caller made room for it.
    pub fn write(&mut self, window: &EncodedWindow) -> io::Result<Spooled> {
        let meta = serde_json::to_vec(&Meta {
            profile: window.profile,
            labels: window.labels.clone(),
            start_unix_ns: window.start_unix_ns,
            end_unix_ns: window.end_unix_ns,
        })
        .map_err(io::Error::other)?;
        if meta.len() > MAX_META {
            return Err(io::Error::other("window labels too large to spool"));
        }
        self.seq += 1;
        let name = format!(
            "{:020}-{:06}{SUFFIX}",
            window.end_unix_ns,
            self.seq % 1_000_000
        );
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&(meta.len() as u32).to_le_bytes())?;
        f.write_all(&meta)?;
        f.write_all(&window.body)?;
        f.sync_data()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        let bytes = (MAGIC.len() + 4 + meta.len() + window.body.len()) as u64;
        self.bytes += bytes;
        Ok(Spooled {
            path,
            bytes,
            end_unix_ns: window.end_unix_ns,
        })
    }

    /// Reads a spooled window back.
    pub fn read(&self, s: &Spooled) -> io::Result<EncodedWindow> {
        let (meta, body) = read_file(&s.path)?;
        Ok(EncodedWindow {
            profile: meta.profile,
            labels: meta.labels,
            start_unix_ns: meta.start_unix_ns,
            end_unix_ns: meta.end_unix_ns,
            body,
        })
    }

    /// Deletes a spooled window (sent, refused or dropped).
    pub fn remove(&mut self, s: &Spooled) {
        if let Err(err) = fs::remove_file(&s.path)
            && err.kind() != io::ErrorKind::NotFound
        {
            warn!("spool: cannot remove {}: {err}", s.path.display());
        }
        self.bytes = self.bytes.saturating_sub(s.bytes);
    }
}

fn open_regular(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if md.len() > MAX_FILE {
        return Err(io::Error::other(format!(
            "{} bytes, more than a window",
            md.len()
        )));
    }
    Ok(f)
}

fn read_header(f: &mut File) -> io::Result<Meta> {
    let mut head = [0u8; 12];
    f.read_exact(&mut head)?;
    if &head[..8] != MAGIC {
        return Err(io::Error::other("not a spooled window"));
    }
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if len > MAX_META {
        return Err(io::Error::other("metadata too large"));
    }
    let mut meta = vec![0u8; len];
    f.read_exact(&mut meta)?;
    serde_json::from_slice(&meta).map_err(io::Error::other)
}

fn read_meta(path: &Path) -> io::Result<(Meta, u64)> {
    let mut f = open_regular(path)?;
    let len = f.metadata()?.len();
    Ok((read_header(&mut f)?, len))
}

fn read_file(path: &Path) -> io::Result<(Meta, Vec<u8>)> {
    let mut f = open_regular(path)?;
    let meta = read_header(&mut f)?;
    let mut body = Vec::new();
    f.take(MAX_FILE).read_to_end(&mut body)?;
    Ok((meta, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(end: u64) -> EncodedWindow {
        EncodedWindow {
            profile: ProfileName::Types,
            labels: Labels::from([("service_name".to_owned(), "app".to_owned())]),
            start_unix_ns: end - 10,
            end_unix_ns: end,
            body: vec![7; 100],
        }
    }

    #[test]
    fn windows_survive_a_restart_in_order_and_junk_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, found, _) = Spool::open(dir.path(), 1 << 20).expect("open");
        assert!(found.is_empty());
        let b = spool.write(&window(200)).expect("write");
        let a = spool.write(&window(100)).expect("write");
        fs::write(dir.path().join("junk.window"), b"nonsense").expect("junk");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link.window")).expect("link");
        let (again, found, bad) = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(bad, 2);
        assert_eq!(found, [a.clone(), b]);
        assert_eq!(again.bytes(), spool.bytes());
        let read = again.read(&a).expect("read");
        assert_eq!(read.end_unix_ns, 100);
        assert_eq!(read.body, vec![7; 100]);
        assert_eq!(read.labels["service_name"], "app");
        assert_eq!(read.profile, ProfileName::Types);
        spool.remove(&a);
        assert!(!a.path.exists());
    }

    #[test]
    fn windows_spooled_before_profile_names_read_as_memory() {
        let meta: Meta = serde_json::from_str(
            r#"{"labels":{"service_name":"app"},"start_unix_ns":1,"end_unix_ns":2}"#,
        )
        .expect("old metadata");
        assert_eq!(meta.profile, ProfileName::Memory);
    }
}
