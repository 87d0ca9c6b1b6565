//! Growth: each stack's live bytes window by window, and a trend test over
//! the last K windows that tells a leak (still growing), a cache (grew,
//! then flat) and churn or spikes (neither) apart. One difference between
//! two windows cannot: a cache warming up and a periodic spike both show
//! one. The test is Mann-Kendall's (the sign of every later-minus-earlier
//! pair, robust to outliers), with Theil-Sen's slope (the median pairwise
//! slope) as the rate; the same functions rank windows of a capture
//! (`tracer report growth`) and the daemon's own windows (its log).

use std::collections::{HashMap, VecDeque};

use crate::{
    event::{Pid, StackId},
    frame::{Frame, SymbolizedStack},
    model::heap::HeapModel,
    report::{Entry, Growth, GrowthEntry},
};

/// One-sided 5% level of the standard normal: z above it is a trend.
const Z_TREND: f64 = 1.645;
/// Growth over the windows tested below this is noise, not a leak or a
/// cache (a few of CPython's own blocks come and go).
pub const MIN_GROWTH_BYTES: f64 = 64.0 * 1024.0;
/// The trend test is quadratic in its windows: at most this many.
pub const MAX_WINDOWS: usize = 120;
/// Fewer windows than this say nothing.
const MIN_WINDOWS: usize = 4;

/// What the growth report is made of.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GrowthOptions {
    /// K: the windows the trend test looks at.
    pub windows: usize,
    /// Windows of this length, instead of the capture's own samples.
    pub window_ns: Option<u64>,
}

impl Default for GrowthOptions {
    fn default() -> Self {
        Self {
            windows: 20,
            window_ns: None,
        }
    }
}

pub use crate::report::GrowthStatus as Status;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trend {
    pub status: Status,
    /// Theil-Sen slope over the last K windows, per hour.
    pub bytes_per_hour: f64,
}

/// One stack's live bytes at the end of each window: the first value seen
/// and the last K.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub first: u64,
    pub recent: VecDeque<u64>,
}

impl Series {
    pub fn push(&mut self, bytes: u64, keep: usize) {
        if self.recent.is_empty() && self.first == 0 {
            self.first = bytes;
        }
        self.recent.push_back(bytes);
        while self.recent.len() > keep.clamp(1, MAX_WINDOWS) {
            self.recent.pop_front();
        }
    }

    /// The last value, 0 before any.
    pub fn last(&self) -> u64 {
        self.recent.back().copied().unwrap_or(0)
    }

    /// Nothing live in any window kept: the series can go.
    pub fn is_empty(&self) -> bool {
        self.recent.iter().all(|v| *v == 0)
    }

    /// Adds `other` (aligned at the latest window) to this one.
    pub fn merge(&mut self, other: &Series) {
        self.first += other.first;
        let n = self.recent.len().max(other.recent.len());
        while self.recent.len() < n {
            self.recent.push_front(0);
        }
        let offset = n - other.recent.len();
        for (i, v) in other.recent.iter().enumerate() {
            self.recent[offset + i] += v;
        }
    }
}

/// Mann-Kendall's z of `values` (ties corrected); 0 for too few.
fn kendall_z(values: &[f64]) -> f64 {
    let n = values.len();
    if n < MIN_WINDOWS / 2 + 1 {
        return 0.0;
    }
    let mut s = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            s += match values[j].partial_cmp(&values[i]) {
                Some(std::cmp::Ordering::Greater) => 1,
                Some(std::cmp::Ordering::Less) => -1,
                _ => 0,
            };
        }
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut ties = 0.0;
    let mut run = 1.0;
    for w in sorted.windows(2) {
        if w[0] == w[1] {
            run += 1.0;
        } else {
            ties += run * (run - 1.0) * (2.0 * run + 5.0);
            run = 1.0;
        }
    }
    ties += run * (run - 1.0) * (2.0 * run + 5.0);
    let nf = n as f64;
    let var = (nf * (nf - 1.0) * (2.0 * nf + 5.0) - ties) / 18.0;
    if var <= 0.0 {
        return 0.0;
    }
    let s = s as f64;
    if s > 0.0 {
        (s - 1.0) / var.sqrt()
    } else if s < 0.0 {
        (s + 1.0) / var.sqrt()
    } else {
        0.0
    }
}

/// Theil-Sen's slope of `values` per window: the median pairwise slope.
fn theil_sen(values: &[f64]) -> f64 {
    let mut slopes = Vec::with_capacity(values.len() * values.len() / 2);
    for i in 0..values.len() {
        for j in i + 1..values.len() {
            slopes.push((values[j] - values[i]) / (j - i) as f64);
        }
    }
    median(&mut slopes)
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The trend of one series of windows of `window_s` seconds.
pub fn trend(series: &Series, window_s: f64) -> Trend {
    let values: Vec<f64> = series.recent.iter().map(|v| *v as f64).collect();
    let n = values.len();
    if n < MIN_WINDOWS {
        return Trend {
            status: Status::Steady,
            bytes_per_hour: 0.0,
        };
    }
    let slope = theil_sen(&values);
    let bytes_per_hour = if window_s > 0.0 {
        slope / window_s * 3600.0
    } else {
        0.0
    };
    let half = &values[n / 2..];
    let growing = kendall_z(&values) > Z_TREND
        && kendall_z(half) > Z_TREND
        && slope * (n - 1) as f64 >= MIN_GROWTH_BYTES;
    let status = if growing {
        Status::Growing
    } else {
        let half_flat = kendall_z(half).abs() <= Z_TREND;
        let grew = median(&mut half.to_vec()) - series.first as f64;
        if half_flat && grew >= MIN_GROWTH_BYTES {
            Status::Plateaued
        } else {
            Status::Steady
        }
    };
    Trend {
        status,
        bytes_per_hour,
    }
}

/// Growing first (fastest first), then plateaued (largest first), then the
/// rest (largest first).
pub fn rank_key(trend: &Trend, last: u64) -> (u8, i128) {
    match trend.status {
        Status::Growing => (0, -(trend.bytes_per_hour as i128)),
        Status::Plateaued => (1, -(last as i128)),
        Status::Steady => (2, -(last as i128)),
    }
}

/// A series per (process, stack), fed the heap model at each window's end.
pub struct Tracker {
    keep: usize,
    /// Window ends still to come, latest last (CLOCK_MONOTONIC ns).
    boundaries: VecDeque<u64>,
    pub series: HashMap<(Pid, StackId), Series>,
    /// Windows taken so far.
    pub windows: u64,
}

impl Tracker {
    /// `boundaries`: when each window ends, in order.
    pub fn new(options: &GrowthOptions, boundaries: Vec<u64>) -> Self {
        Self {
            keep: options.windows,
            boundaries: boundaries.into(),
            series: HashMap::new(),
            windows: 0,
        }
    }

    /// Takes the windows that end before `ts_ns` (an event about to be
    /// applied, or the end of the capture).
    pub fn before(&mut self, ts_ns: u64, heap: &HeapModel) {
        while self.boundaries.front().is_some_and(|b| *b <= ts_ns) {
            self.boundaries.pop_front();
            self.take(heap);
        }
    }

    /// The end of a window: every stack's live bytes now.
    pub fn take(&mut self, heap: &HeapModel) {
        let mut now: HashMap<(Pid, StackId), u64> = HashMap::new();
        for (pid, process) in heap.processes() {
            for (stack, stats) in process.stacks() {
                if stats.live.bytes > 0 {
                    now.insert((pid, *stack), stats.live.bytes);
                }
            }
        }
        self.window(now);
    }

    /// The end of a window whose live bytes per (process, stack) are `now`
    /// (absent: none).
    pub fn window(&mut self, mut now: HashMap<(Pid, StackId), u64>) {
        self.windows += 1;
        let keep = self.keep;
        for (key, s) in self.series.iter_mut() {
            s.push(now.remove(key).unwrap_or(0), keep);
        }
        for (key, bytes) in now {
            self.series.entry(key).or_default().push(bytes, keep);
        }
        self.series.retain(|_, s| !s.is_empty());
    }
}

impl Tracker {
    /// The growth report of what was taken, windows of `window_s`: series
    /// of one process whose stacks read the same are added up.
    pub fn report(&self, window_s: f64, stack_of: impl Fn(StackId) -> SymbolizedStack) -> Growth {
        let mut index: HashMap<(Pid, Vec<String>), usize> = HashMap::new();
        let mut merged: Vec<(Entry, Series)> = Vec::new();
        let mut keys: Vec<&(Pid, StackId)> = self.series.keys().collect();
        keys.sort();
        for key in keys {
            let (pid, stack) = *key;
            let series = &self.series[key];
            let s = stack_of(stack);
            let place = (pid, s.frames.iter().map(Frame::place).collect());
            match index.get(&place) {
                Some(&i) => {
                    merged[i].1.merge(series);
                    merged[i].0.truncated |= s.truncated;
                }
                None => {
                    index.insert(place, merged.len());
                    let entry = Entry {
                        pid,
                        bytes: 0,
                        count: 0,
                        stack: s.frames,
                        truncated: s.truncated,
                        types: Vec::new(),
                    };
                    merged.push((entry, series.clone()));
                }
            }
        }
        let mut entries: Vec<GrowthEntry> = merged
            .into_iter()
            .map(|(mut entry, series)| {
                let t = trend(&series, window_s);
                entry.bytes = series.last();
                GrowthEntry {
                    entry,
                    status: t.status,
                    bytes_per_hour: t.bytes_per_hour,
                    series: series.recent.into_iter().collect(),
                }
            })
            .collect();
        entries.sort_by_key(|g| {
            let t = Trend {
                status: g.status,
                bytes_per_hour: g.bytes_per_hour,
            };
            (rank_key(&t, g.entry.bytes), g.entry.pid)
        });
        Growth {
            window_s,
            windows: self.windows,
            tested: self.keep.clamp(1, MAX_WINDOWS),
            entries,
        }
    }
}

/// The typical window length of `ends` (the median gap), in seconds.
pub fn window_s(ends: &[u64]) -> f64 {
    let mut gaps: Vec<f64> = ends
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]) as f64 / 1e9)
        .collect();
    median(&mut gaps)
}

/// Window ends for a capture from `start_ns` to `end_ns`: every
/// `window_ns`, or else when memory was sampled (each `--sample-ms` of
/// `record`, each `--interval` of the daemon), and at the end.
pub fn boundaries(start_ns: u64, end_ns: u64, window_ns: Option<u64>, samples: &[u64]) -> Vec<u64> {
    let Some(w) = window_ns.filter(|w| *w > 0) else {
        return sample_ends(start_ns, end_ns, samples);
    };
    let count = end_ns.saturating_sub(start_ns) / w;
    // A capture of weeks in 1-second windows: the last ones only.
    let skip = count.saturating_sub(MAX_WINDOWS as u64 * 4);
    let mut ends: Vec<u64> = (skip + 1..=count).map(|k| start_ns + k * w).collect();
    // The rest after the last whole window joins it if it is short.
    if ends.last().is_some_and(|last| end_ns - last < w / 2) {
        ends.pop();
    }
    ends.push(end_ns);
    ends
}

/// Sample times as window ends. `record` samples once as it begins and
/// once more just before it ends: windows of a few milliseconds beside
/// ones of `--sample-ms` would count as windows of the trend test while
/// holding nothing, so an end closer than half the typical gap to the
/// previous one is dropped (the capture's end replaces the last sample).
fn sample_ends(start_ns: u64, end_ns: u64, samples: &[u64]) -> Vec<u64> {
    let mut points: Vec<u64> = samples
        .iter()
        .copied()
        .filter(|t| *t > start_ns && *t < end_ns)
        .collect();
    points.sort_unstable();
    points.dedup();
    points.push(end_ns);
    let mut gaps: Vec<f64> = std::iter::once(start_ns)
        .chain(points.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]) as f64)
        .collect();
    let half = median(&mut gaps) / 2.0;
    let mut ends: Vec<u64> = Vec::with_capacity(points.len());
    let mut previous = start_ns;
    for t in points {
        if (t.saturating_sub(previous) as f64) < half {
            if t == end_ns
                && let Some(last) = ends.last_mut()
            {
                *last = end_ns;
            }
            continue;
        }
        ends.push(t);
        previous = t;
    }
    if ends.is_empty() {
        ends.push(end_ns);
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[u64]) -> Series {
        let mut s = Series::default();
        for v in values {
            s.push(*v, 20);
        }
        s
    }

    #[test]
    fn a_linear_leak_is_growing_at_its_rate() {
        let values: Vec<u64> = (0..20).map(|i| i * 1_000_000).collect();
        let t = trend(&series(&values), 1.0);
        assert_eq!(t.status, Status::Growing);
        assert!((t.bytes_per_hour - 3.6e9).abs() < 1.0, "{t:?}");
    }

    #[test]
    fn a_cache_that_filled_is_plateaued() {
        let values: Vec<u64> = (0..20).map(|i| (i.min(6)) * 1_000_000).collect();
        assert_eq!(trend(&series(&values), 1.0).status, Status::Plateaued);
    }

    #[test]
    fn spikes_and_noise_are_steady() {
        let spikes: Vec<u64> = (0..20)
            .map(|i| if i % 5 == 2 { 32 << 20 } else { 0 })
            .collect();
        assert_eq!(trend(&series(&spikes), 1.0).status, Status::Steady);
        let flat = [5_000_000u64; 20];
        assert_eq!(trend(&series(&flat), 1.0).status, Status::Steady);
        // One jump is not a trend of the second half.
        let step: Vec<u64> = (0..20).map(|i| if i < 19 { 0 } else { 9 << 20 }).collect();
        assert_ne!(trend(&series(&step), 1.0).status, Status::Growing);
        assert_eq!(trend(&series(&[1, 2, 3]), 1.0).status, Status::Steady);
    }

    #[test]
    fn a_leak_with_spikes_on_top_is_still_growing() {
        let values: Vec<u64> = (0..20)
            .map(|i| i * 1_000_000 + if i % 4 == 0 { 30_000_000 } else { 0 })
            .collect();
        assert_eq!(trend(&series(&values), 1.0).status, Status::Growing);
    }

    #[test]
    fn series_keep_the_last_windows_and_merge_aligned() {
        let mut a = series(&(0..30).collect::<Vec<_>>());
        assert_eq!(a.recent.len(), 20);
        assert_eq!(a.last(), 29);
        let b = series(&[5, 5]);
        a.merge(&b);
        assert_eq!(a.recent.len(), 20);
        assert_eq!(a.last(), 34);
        assert_eq!(a.recent[17], 27);
    }

    #[test]
    fn boundaries_come_from_samples_or_a_window_length() {
        assert_eq!(boundaries(0, 100, None, &[30, 10, 30]), [10, 30, 100]);
        assert_eq!(boundaries(0, 100, Some(40), &[]), [40, 80, 100]);
        assert_eq!(boundaries(0, 90, Some(40), &[]), [40, 90]);
        assert_eq!(boundaries(0, 80, Some(40), &[]), [40, 80]);
        // record's samples as it begins and just before its end.
        assert_eq!(
            boundaries(1000, 1400, None, &[1001, 1100, 1200, 1300, 1399]),
            [1100, 1200, 1300, 1400]
        );
        assert_eq!(boundaries(0, 100, None, &[]), [100]);
        assert_eq!(boundaries(50, 50, None, &[50]), [50]);
    }
}
