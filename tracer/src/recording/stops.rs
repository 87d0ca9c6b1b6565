//! The signals that stop a recording.

use anyhow::Result;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// What stops a recording from outside: Ctrl-C, SIGTERM, and SIGHUP (the
/// terminal or ssh session went away; not for the daemon, which reloads on
/// it), each with the reports made.
pub(super) struct Stops {
    interrupt: Signal,
    terminate: Signal,
    hangup: Option<Signal>,
}

impl Stops {
    pub(super) fn new(hangup_stops: bool) -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: hangup_stops
                .then(|| signal(SignalKind::hangup()))
                .transpose()?,
        })
    }

    /// Waits for one; says which.
    pub(super) async fn next(&mut self) -> &'static str {
        let Self {
            interrupt,
            terminate,
            hangup,
        } = self;
        let hangup = async {
            match hangup {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt.recv() => "interrupted",
            _ = terminate.recv() => "terminated",
            _ = hangup => "hung up",
        }
    }
}
