//! The user tracer acts for: whoever ran it (through sudo: `SUDO_UID` and
//! `SUDO_GID`), or the one `--user` names. A launched command runs as that
//! user, and the files tracer writes for them are theirs.

use anyhow::{Context as _, Result, bail};
use nix::unistd::{Gid, Uid};

/// A user and the groups a process of theirs runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, as a login of theirs would have them.
    pub groups: Vec<u32>,
    pub name: String,
}

impl User {
    /// `--user NAME|UID` if given, else the user who ran `sudo tracer`,
    /// else tracer's own real user.
    pub fn resolve(named: Option<&str>) -> Result<Self> {
        let account = match named {
            Some(name) => match name.parse::<u32>() {
                Ok(uid) => nix::unistd::User::from_uid(Uid::from_raw(uid))
                    .with_context(|| format!("looking up user {uid}"))?,
                Err(_) => nix::unistd::User::from_name(name)
                    .with_context(|| format!("looking up user {name}"))?,
            },
            None => {
                let (uid, _) = sudo_ids().unwrap_or((nix::unistd::getuid().as_raw(), 0));
                nix::unistd::User::from_uid(Uid::from_raw(uid))
                    .with_context(|| format!("looking up user {uid}"))?
            }
        };
        let Some(account) = account else {
            bail!(
                "--user {}: no such user on this host (give a name from /etc/passwd or a uid)",
                named.unwrap_or("")
            );
        };
        // sudo's group wins over the account's: it is what the shell had.
        let gid = match (named, sudo_ids()) {
            (None, Some((_, gid))) => gid,
            _ => account.gid.as_raw(),
        };
        let groups = account_groups(&account.name, gid);
        Ok(Self {
            uid: account.uid.as_raw(),
            gid,
            groups,
            name: account.name,
        })
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// The user and group that ran `sudo tracer`, if it was run so (as root).
pub fn sudo_ids() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let id = |name| std::env::var(name).ok()?.parse::<u32>().ok();
    Some((id("SUDO_UID")?, id("SUDO_GID")?))
}

/// `name`'s supplementary groups (getgrouplist), or just `gid`.
fn account_groups(name: &str, gid: u32) -> Vec<u32> {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return vec![gid];
    };
    nix::unistd::getgrouplist(&cname, Gid::from_raw(gid)).map_or_else(
        |_| vec![gid],
        |groups| groups.into_iter().map(Gid::as_raw).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_and_uids() {
        let root = User::resolve(Some("root")).expect("root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.is_root());
        assert_eq!(User::resolve(Some("0")).expect("uid 0").name, "root");
        let err = User::resolve(Some("no-such-user-here")).expect_err("unknown");
        assert!(err.to_string().contains("no such user"), "{err}");
    }
}
