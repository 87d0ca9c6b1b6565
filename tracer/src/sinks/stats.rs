//! What the daemon counts, shared between the event loop, the export and
//! push threads, and the metrics endpoint: atomics, read at any time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One push destination's counters.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// "pyroscope" or "parca".
    pub name: &'static str,
    /// Windows the backend accepted.
    pub pushed: AtomicU64,
    /// Windows the backend refused for good (a 4xx other than 408 and 429).
    pub failed: AtomicU64,
    /// Attempts that will be tried again (connection errors, timeouts, 5xx,
    /// 408, 429).
    pub retried: AtomicU64,
    /// Windows dropped by tracer: the queue full without a spool.
    pub dropped_queue_full: AtomicU64,
    /// Windows dropped because they were older than the backends accept.
    pub dropped_too_old: AtomicU64,
    /// Windows dropped to keep the spool under its cap.
    pub dropped_spool_full: AtomicU64,
    /// Windows dropped at shutdown: not sent within the flush time, and no
    /// spool to keep them.
    pub dropped_shutdown: AtomicU64,
    /// Bytes in the spool now.
    pub spool_bytes: AtomicU64,
    /// Windows waiting to be sent, in memory or spooled.
    pub queued: AtomicU64,
}

impl SinkStats {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Every dropped window, by reason.
    pub fn dropped(&self) -> [(&'static str, u64); 4] {
        [
            ("queue_full", self.dropped_queue_full.load(Relaxed)),
            ("too_old", self.dropped_too_old.load(Relaxed)),
            ("spool_full", self.dropped_spool_full.load(Relaxed)),
            ("shutdown", self.dropped_shutdown.load(Relaxed)),
        ]
    }
}

/// The daemon's own counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Windows made (one per process and interval).
    pub windows: AtomicU64,
    /// Windows the export thread could not take (it was busy).
    pub windows_dropped: AtomicU64,
    /// Events handed to the sinks.
    pub events: AtomicU64,
    /// The kernel's count of events lost (ring buffer full).
    pub lost_events: AtomicU64,
    /// Processes traced now.
    pub processes: AtomicU64,
    /// Live allocations the heap model tracks now.
    pub tracked: AtomicU64,
    /// Allocations forgotten to keep under `--max-tracked`.
    pub evicted: AtomicU64,
}
