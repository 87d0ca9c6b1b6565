//! What a recording is given besides its options: where its events go
//! (`tracer record`'s capture and reports, `tracer top`'s view, the
//! daemon's windows) and the daemon's bounds.

use anyhow::Result;

use crate::sinks::{Sink, capture::CaptureFile};

/// What a recording does besides tracing what its options name: where the
/// events go (`tracer record`'s capture and reports, `tracer top`'s view,
/// the daemon's windows) and the daemon's bounds.
pub struct Plan {
    /// Makes the sinks, given when recording began (CLOCK_MONOTONIC ns).
    pub sinks: SinksOf,
    /// `--match`: only the CPython processes whose command line matches.
    pub matching: Option<regex::Regex>,
    /// `--max-tracked`.
    pub heap_cap: Option<u64>,
    /// Whether SIGHUP stops the recording (the daemon reloads on it).
    pub hangup_stops: bool,
    /// Called once the probes are in place (the daemon tells systemd).
    pub on_ready: Box<dyn FnOnce()>,
    /// Called when recording stops, before the sinks finish.
    pub on_stop: Box<dyn FnOnce()>,
}

/// The sinks of a recording, and the capture file among them whose size
/// `--max-capture-mb` bounds.
pub struct Sinks {
    pub sinks: Vec<Box<dyn Sink>>,
    pub capture: Option<CaptureFile>,
}

pub type SinksOf = Box<dyn FnOnce(u64) -> Result<Sinks>>;

impl Plan {
    /// A recording into the sinks `sinks` makes, without the daemon's bounds.
    pub fn into_sinks(sinks: SinksOf) -> Self {
        Self {
            sinks,
            matching: None,
            heap_cap: None,
            hangup_stops: true,
            on_ready: Box::new(|| {}),
            on_stop: Box::new(|| {}),
        }
    }
}
