//! What /proc says of a process besides its map: its command line, its
//! environment's allocator switch, its resident set, and which processes
//! may run CPython.

use std::fs;

use crate::{event::Pid, proc_maps::ProcessMaps};

/// The command line of a process, for display.
pub fn command_line(pid: Pid) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Whether the process was started with PYTHONMALLOC=malloc (or
/// malloc_debug): then every object allocation goes through libc.
pub fn python_malloc_is_libc(pid: Pid) -> bool {
    fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
        env.split(|b| *b == 0)
            .any(|v| v == b"PYTHONMALLOC=malloc" || v == b"PYTHONMALLOC=malloc_debug")
    })
}

/// A process's resident set in bytes, from /proc/PID/statm.
pub fn rss_bytes(pid: Pid) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // An exited process not yet reaped reads as zero pages.
    if pages == 0 {
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Whether `pid`'s map names a python file: a cheap first test of `--all`'s
/// candidates (the real one is `python::detect`).
pub fn maps_python(pid: Pid) -> bool {
    ProcessMaps::read(pid).is_ok_and(|maps| {
        maps.files().any(|m| {
            m.path
                .rsplit('/')
                .next()
                .is_some_and(|n| n.contains("python"))
        })
    })
}

/// A process's parent, from /proc/PID/stat.
pub fn parent(pid: Pid) -> Option<Pid> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) may hold spaces and parentheses: fields resume
    // after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A process and its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Child {
    pub pid: Pid,
    pub parent: Pid,
}

/// Every descendant of `pid` running now, parents before their children.
pub fn descendants(pid: Pid) -> Vec<Child> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let all: Vec<Child> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<Pid>().ok())
        .filter_map(|p| {
            Some(Child {
                pid: p,
                parent: parent(p)?,
            })
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for c in all.iter().filter(|c| c.parent == p && c.pid != pid) {
            if !found.contains(c) {
                found.push(*c);
                frontier.push(c.pid);
            }
        }
    }
    found
}

/// Every process on the host but this one.
pub fn all_processes() -> Vec<Pid> {
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<Pid>().ok())
        .filter(|&pid| pid != me)
        .collect()
}

/// Every process on the host that may run CPython.
pub fn python_candidates() -> Vec<Pid> {
    all_processes()
        .into_iter()
        .filter(|&pid| maps_python(pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(!command_line(me).is_empty());
        assert!(rss_bytes(me).is_some_and(|b| b > 0));
        assert_eq!(rss_bytes(u32::MAX), None);
    }

    #[test]
    fn finds_children_and_grandchildren() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 3 & wait"])
            .spawn()
            .expect("sh");
        let me = std::process::id();
        let pid = child.id();
        assert_eq!(parent(pid), Some(me));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut found = descendants(me);
        while !found.iter().any(|c| c.parent == pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            found = descendants(me);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&Child { pid, parent: me }), "{found:?}");
        assert!(
            found.iter().any(|c| c.parent == pid),
            "the sleep: {found:?}"
        );
    }
}
