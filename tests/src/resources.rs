//! What a process holds, read from /proc: its resident set and its open
//! descriptors, which the churn test and the soaks watch stay flat.

use std::fs;

/// `pid`'s resident set in KiB (`VmRSS`), if it is still running.
pub fn rss_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// How many descriptors `pid` holds open, if it is still running.
pub fn open_descriptors(pid: u32) -> Option<u64> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}
