//! Files that traced processes map or name, opened once and checked. A
//! process controls the paths of the files it maps (a directory of its
//! own, its container's root): a path stat'ed, then opened, then handed to
//! the kernel can name three different files. So a mapped file is opened
//! once, through the kernel's own reference to it (`/proc/PID/map_files`),
//! checked (a regular file, with the device and inode the process maps),
//! and from then on parsed, probed (`/proc/self/fd/N`) and symbolized
//! through that one descriptor. Reads are `pread`: a file its owner can
//! truncate is never mapped into memory (a read past the end would be
//! SIGBUS), except by a copy of our own (`elf::private_copy`).

use std::{
    fs::File,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::{FileExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{OFlag, OpenHow, ResolveFlag, openat2},
    sys::stat::Mode,
};

use crate::proc_maps::{FileId, Mapping};

/// A file a traced process maps or names, open and checked.
#[derive(Debug)]
pub struct TargetFile {
    file: File,
    id: FileId,
    size: u64,
    /// Owned by root, writable by no one else, and the very file the
    /// process's path names in tracer's own root: only root can change it,
    /// so it may be mapped into memory and its debug links followed.
    trusted: bool,
    /// The path as the process names it, for messages.
    shown: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is not a regular file")]
    NotRegular(String),
    #[error("{0} is not the file the process maps (replaced since)")]
    Replaced(String),
    #[error("{0} is not owned by root, or others can write it: not trusted")]
    NotRootOwned(String),
}

/// Flags of every open: never wait on a FIFO or take a terminal.
fn flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY
}

impl TargetFile {
    /// The file `mapping` maps in `pid`, opened through
    /// `/proc/PID/map_files/START-END` (the mapping's own file, whatever
    /// its path names now), else through the process's root without
    /// following any link; a regular file with the mapping's device and
    /// inode, or an error.
    pub fn mapped(pid: u32, mapping: &Mapping) -> Result<Self, FileError> {
        let id = FileId::from(mapping);
        let by_map = PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            mapping.start, mapping.end
        ));
        let opened = nix::fcntl::open(&by_map, flags(), Mode::empty())
            .or_else(|_| open_in_root(&format!("/proc/{pid}/root"), &mapping.path))
            .map_err(|errno| FileError::Open {
                path: mapping.path.clone(),
                source: errno.into(),
            })?;
        let file = Self::checked(File::from(opened), mapping.path.clone())?;
        if file.id != id {
            return Err(FileError::Replaced(mapping.path.clone()));
        }
        Ok(file)
    }

    /// `path` inside the root directory `root` (`/` or `/proc/PID/root`),
    /// resolved without following any symbolic link and without leaving
    /// `root`: a regular file owned by root that no one else can write
    /// (the debug files whose addresses tracer probes).
    pub fn root_owned(root: &Path, path: &str) -> Result<Self, FileError> {
        let shown = Path::new(&root).join(path.trim_start_matches('/'));
        let shown = shown.display().to_string();
        let fd =
            open_in_root(&root.display().to_string(), path).map_err(|errno| FileError::Open {
                path: shown.clone(),
                source: errno.into(),
            })?;
        let file = Self::checked(File::from(fd), shown.clone())?;
        let md = file.file.metadata().map_err(|source| FileError::Open {
            path: shown.clone(),
            source,
        })?;
        if md.uid() != 0 || md.mode() & 0o022 != 0 {
            return Err(FileError::NotRootOwned(shown));
        }
        Ok(file)
    }

    /// A regular file, with its identity read from the descriptor.
    fn checked(file: File, shown: String) -> Result<Self, FileError> {
        let md = file.metadata().map_err(|source| FileError::Open {
            path: shown.clone(),
            source,
        })?;
        if !md.file_type().is_file() {
            return Err(FileError::NotRegular(shown));
        }
        let id = FileId {
            dev_major: libc::major(md.dev()),
            dev_minor: libc::minor(md.dev()),
            inode: md.ino(),
        };
        let root_only = md.uid() == 0 && md.mode() & 0o022 == 0;
        // The host's own file: the process's path names it in our root too.
        let on_host =
            std::fs::metadata(&shown).is_ok_and(|h| h.dev() == md.dev() && h.ino() == md.ino());
        Ok(Self {
            file,
            id,
            size: md.len(),
            trusted: root_only && on_host,
            shown,
        })
    }

    pub fn id(&self) -> FileId {
        self.id
    }

    /// Its size when it was opened (its owner may change it since).
    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// The path as the process names it.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A path to this very file for as long as it is open: what the kernel
    /// (uprobes) and blazesym are given, never a path the process controls.
    pub fn kernel_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Reads at `offset`; short (or empty) at the end of the file.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => done += n,
            }
        }
        done
    }

    /// A second descriptor of the same open file.
    pub fn try_clone(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }
}

/// Opens `path` in the directory tree rooted at `root`, as if `root` were
/// `/`, following no symbolic link (nor /proc's magic links).
fn open_in_root(root: &str, path: &str) -> nix::Result<OwnedFd> {
    let dir = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let how = OpenHow::new().flags(flags()).resolve(
        ResolveFlag::RESOLVE_IN_ROOT
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    );
    openat2(&dir, path.trim_start_matches('/'), how)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc_maps::ProcessMaps;

    #[test]
    fn opens_what_this_process_maps() {
        let me = std::process::id();
        let maps = ProcessMaps::read(me).expect("maps");
        let libc = maps.files().find(|m| m.is_glibc()).expect("libc mapped");
        let file = TargetFile::mapped(me, libc).expect("open");
        assert_eq!(file.id(), FileId::from(libc));
        assert!(file.trusted(), "the host's libc is root's");
        let mut magic = [0u8; 4];
        assert_eq!(file.read_at(0, &mut magic), 4);
        assert_eq!(&magic, b"\x7fELF");
        assert_eq!(file.read_at(file.len(), &mut magic), 0);
        let linked = std::fs::metadata(file.kernel_path()).expect("stat");
        assert_eq!(linked.ino(), libc.inode);
    }

    #[test]
    fn refuses_links_and_other_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("real"), b"x").expect("write");
        std::os::unix::fs::symlink("real", tmp.path().join("link")).expect("symlink");
        let root = tmp.path();
        assert!(matches!(
            TargetFile::root_owned(root, "/link"),
            Err(FileError::Open { .. })
        ));
        // tempdir files are root's here, but 0644 and in a 0700 dir: fine.
        assert!(TargetFile::root_owned(root, "/real").is_ok());
        std::fs::create_dir(root.join("d")).expect("mkdir");
        assert!(matches!(
            TargetFile::root_owned(root, "/d"),
            Err(FileError::NotRegular(_))
        ));
        // Escaping the root with .. stays inside it.
        assert!(TargetFile::root_owned(root, "/../../etc/passwd").is_err());
        let me = std::process::id();
        let mut fake = ProcessMaps::read(me)
            .expect("maps")
            .files()
            .find(|m| m.is_glibc())
            .expect("libc")
            .clone();
        fake.inode += 1;
        assert!(matches!(
            TargetFile::mapped(me, &fake),
            Err(FileError::Replaced(_))
        ));
    }
}
