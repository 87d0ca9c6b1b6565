//! The files tracer writes where a user asked (`record -o DIR`, `report -o
//! FILE`). tracer runs as root, and the directory may be one that another
//! user can write: so a file is only ever created new (`O_CREAT|O_EXCL|
//! O_NOFOLLOW`, relative to the directory's descriptor, mode 0600), never
//! opened through a link and never truncated; the directory itself must
//! belong to root or to the user tracer acts for. Outputs hold the command
//! lines of every traced process: only their owner reads them.

use std::{
    fs::File,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::fs::DirBuilderExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    errno::Errno,
    fcntl::{AtFlags, OFlag, openat},
    sys::stat::{FileStat, Mode, SFlag, fstat, fstatat},
    unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat},
};

use crate::user::sudo_ids;

/// A directory outputs are created in, held by its descriptor.
pub struct OutputDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl OutputDir {
    /// `path`, created (mode 0700, with any missing parents) if it does
    /// not exist. One that exists must be a directory, not a link, owned by
    /// root or by the user tracer acts for.
    pub fn create(path: &Path) -> Result<Self> {
        let new = std::fs::symlink_metadata(path).is_err();
        if let Err(err) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
        {
            bail!("cannot create the directory {}: {err}", path.display());
        }
        let dir = Self::open(path)?;
        // A directory made for the user who ran sudo is theirs.
        if new && let Some((uid, gid)) = sudo_ids() {
            let _ = fchown(&dir.fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        }
        Ok(dir)
    }

    /// An existing directory, checked as `create` checks it.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display();
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|err| match err {
            Errno::ELOOP | Errno::ENOTDIR => anyhow::anyhow!(
                "{shown} is not a directory (or is a symbolic link): give a directory of your own"
            ),
            err => anyhow::anyhow!("cannot open the directory {shown}: {err}"),
        })?;
        let stat = fstat(&fd).with_context(|| format!("cannot read {shown}"))?;
        if !allowed_owner(stat.st_uid) {
            bail!(
                "{shown} belongs to uid {}, not to root or to you: tracer writes its outputs only into a directory of yours (remove it, or choose another)",
                stat.st_uid
            );
        }
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates `name` in the directory, new, mode 0600, readable and
    /// writable. A regular file that tracer could have written (an earlier
    /// run's, owned by root or the user it acts for) is removed first: its
    /// name is unlinked, never truncated, so a hard link elsewhere is left
    /// as it was. Anything else there (a link, a FIFO, a directory, another
    /// user's file) is refused.
    pub fn create_file(&self, name: &str) -> Result<File> {
        let shown = self.path.join(name);
        let shown = shown.display();
        match fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) if is_regular(&stat) && allowed_owner(stat.st_uid) => {
                unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir)
                    .with_context(|| format!("cannot replace {shown}"))?;
            }
            Ok(_) => bail!(
                "{shown} exists and is not a file tracer wrote (a link, a FIFO, a directory or another user's file): remove it or choose another output"
            ),
            Err(Errno::ENOENT) => {}
            Err(err) => bail!("cannot check {shown}: {err}"),
        }
        let fd = openat(
            &self.fd,
            name,
            OFlag::O_RDWR
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|err| match err {
            Errno::EEXIST | Errno::ELOOP => anyhow::anyhow!(
                "{shown} appeared while tracer was creating it (another process is writing there): choose a directory of your own"
            ),
            err => anyhow::anyhow!("cannot create {shown}: {err}"),
        })?;
        if let Some((uid, gid)) = sudo_ids() {
            let _ = fchown(
                fd.as_fd(),
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
            );
        }
        Ok(File::from(fd))
    }
}

/// `report -o FILE`: `path` created as `OutputDir::create_file` does, in
/// its (existing) directory.
pub fn create_file(path: &Path) -> Result<File> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        bail!("{} does not name a file", path.display());
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    OutputDir::open(dir)?.create_file(name)
}

fn is_regular(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
}

/// Root, tracer's own user, or the user who ran it through sudo.
fn allowed_owner(uid: u32) -> bool {
    uid == 0
        || uid == nix::unistd::geteuid().as_raw()
        || sudo_ids().is_some_and(|(sudo_uid, _)| sudo_uid == uid)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;

    #[test]
    fn creates_private_files_and_replaces_its_own() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = OutputDir::create(&tmp.path().join("a/b")).expect("create");
        let mode = std::fs::metadata(dir.path()).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::io::Write::write_all(&mut dir.create_file("x").expect("x"), b"1").expect("write");
        let path = dir.path().join("x");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").mode() & 0o777,
            0o600
        );
        // A hard link to the old file keeps its contents.
        let keep = tmp.path().join("keep");
        std::fs::hard_link(&path, &keep).expect("link");
        dir.create_file("x").expect("again");
        assert_eq!(std::fs::read(&keep).expect("read"), b"1");
        assert_eq!(std::fs::read(&path).expect("read"), b"");
    }

    #[test]
    fn refuses_links_and_fifos() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = OutputDir::create(tmp.path()).expect("open");
        let target = tmp.path().join("target");
        std::fs::write(&target, b"keep").expect("write");
        std::os::unix::fs::symlink(&target, tmp.path().join("link")).expect("symlink");
        let err = dir.create_file("link").expect_err("a link");
        assert!(err.to_string().contains("not a file tracer wrote"), "{err}");
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
        nix::unistd::mkfifo(&tmp.path().join("fifo"), Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        assert!(dir.create_file("fifo").is_err());
        let linked_dir = tmp.path().join("dirlink");
        std::os::unix::fs::symlink(tmp.path(), &linked_dir).expect("symlink");
        let err = OutputDir::open(&linked_dir).err().expect("a link");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
    }
}
