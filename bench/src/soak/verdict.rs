//! The soak's verdict: whether tracer stayed flat after its warm-up, from
//! the samples alone (a pure function, tested on synthetic samples).

use std::time::Duration;

use anyhow::{Result, bail};

use super::Row;

const WARM_UP: Duration = Duration::from_secs(300);
/// Growth after the warm-up that still counts as flat: the allocator's
/// and the stack table's slack.
const RSS_SLACK: f64 = 0.10;

/// What the samples say: failures, and a line of what was flat.
pub(super) struct Verdict {
    pub(super) failures: Vec<String>,
    pub(super) summary: String,
}

/// Descriptors may differ by this many between the first and the last
/// minutes' medians: a job being adopted holds a pidfd and its files for a
/// moment, so one sample may catch one or two more.
const FD_SLACK: u64 = 2;
/// Minutes at each end of the warm period whose medians are compared.
const ENDS_MINUTES: f64 = 5.0;

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// Flat after the warm-up: RSS never more than `RSS_SLACK` above its first
/// value; descriptors not grown (the median of the last `ENDS_MINUTES`
/// against that of the first, so that one sample catching a descriptor in
/// flight is not growth); the spool empty with the server up; nothing
/// refused; SIGTERM answered within 15 s.
pub(super) fn judge(rows: &[Row], stop_s: f64) -> Result<Verdict> {
    let warm = rows
        .iter()
        .filter(|r| r.minute * 60.0 >= WARM_UP.as_secs_f64())
        .copied()
        .collect::<Vec<_>>();
    let (Some(first), Some(last)) = (warm.first(), warm.last()) else {
        bail!("the soak was shorter than its 5-minute warm-up: no verdict");
    };
    let max_rss = warm.iter().map(|r| r.rss_kib).max().unwrap_or(0);
    let fds_at = |from: f64, to: f64| {
        median(
            warm.iter()
                .filter(|r| r.minute >= from && r.minute <= to)
                .map(|r| r.fds)
                .collect(),
        )
    };
    let early_fds = fds_at(first.minute, first.minute + ENDS_MINUTES);
    let late_fds = fds_at(last.minute - ENDS_MINUTES, last.minute);
    let max_spool = warm.iter().map(|r| r.spool_bytes).max().unwrap_or(0);
    let mut failures = Vec::new();
    if max_rss as f64 > first.rss_kib as f64 * (1.0 + RSS_SLACK) {
        failures.push(format!(
            "RSS grew from {} to {} KiB after the warm-up",
            first.rss_kib, max_rss
        ));
    }
    if late_fds > early_fds + FD_SLACK {
        failures.push(format!(
            "descriptors grew from {early_fds} to {late_fds} (medians of the first and last {ENDS_MINUTES} minutes)"
        ));
    }
    if max_spool > 0 {
        failures.push(format!(
            "the spool held {max_spool} bytes with the server up"
        ));
    }
    if last.refused > 0.0 {
        failures.push("windows were refused".to_owned());
    }
    if stop_s > 15.0 {
        failures.push(format!("SIGTERM took {stop_s:.1} s"));
    }
    let (min_fds, max_fds) = (
        warm.iter().map(|r| r.fds).min().unwrap_or(0),
        warm.iter().map(|r| r.fds).max().unwrap_or(0),
    );
    Ok(Verdict {
        failures,
        summary: format!(
            "RSS {} -> max {max_rss} KiB, fds {min_fds}..{max_fds} (medians {early_fds} -> {late_fds}), spool 0",
            first.rss_kib
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(minute: f64, rss_kib: u64, fds: u64) -> Row {
        Row {
            minute,
            rss_kib,
            fds,
            spool_bytes: 0,
            capture_bytes: 0,
            pushed: 0.0,
            refused: 0.0,
            processes: 3.0,
            tracked: 0.0,
            lost: 0.0,
            cpu_s: 0.0,
        }
    }

    /// Samples every half minute from 0.5 to 29.5, `fds` per sample.
    fn rows(fds: impl Fn(usize) -> u64) -> Vec<Row> {
        (1..60)
            .map(|i| row(i as f64 / 2.0, 290_000 + i as u64 * 100, fds(i)))
            .collect()
    }

    #[test]
    fn a_descriptor_in_flight_now_and_then_is_not_growth() {
        // The 2026-12-01 soak: 154 to 157, around 156, no trend.
        let v = judge(&rows(|i| [154, 155, 156, 156, 157, 156][i % 6]), 0.3).expect("verdict");
        assert!(v.failures.is_empty(), "{:?}", v.failures);
    }

    #[test]
    fn descriptors_that_climb_fail() {
        let v = judge(&rows(|i| 150 + i as u64 / 4), 0.3).expect("verdict");
        assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
        assert!(v.failures[0].starts_with("descriptors grew"));
    }

    #[test]
    fn rss_past_its_slack_fails() {
        let mut r = rows(|_| 150);
        r.last_mut().expect("rows").rss_kib = 400_000;
        let v = judge(&r, 0.3).expect("verdict");
        assert!(v.failures[0].starts_with("RSS grew"), "{:?}", v.failures);
    }
}
