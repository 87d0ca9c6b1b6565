//! `tracer top`'s options: the shared groups of a recording, and the
//! view's own.

use std::{ffi::OsString, time::Duration};

use anyhow::Result;
use clap::Args;

use super::recording::{
    BoundsArgs, IntervalArgs, SamplingArgs, TargetArgs, launch, probe_settings,
};
use crate::recording::settings::{Settings, WalkSettings};

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub targets: TargetArgs,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    #[command(flatten)]
    pub bounds: BoundsArgs,

    #[command(flatten)]
    pub interval: IntervalArgs,

    /// Print one refresh as text and exit (also when stdout is no terminal).
    #[arg(long)]
    pub once: bool,

    /// Start with native frames (the allocation function's caller).
    #[arg(long)]
    pub native: bool,

    /// The command to start and watch.
    #[arg(last = true, value_name = "COMMAND", conflicts_with_all = ["all", "matching"])]
    pub command: Vec<OsString>,
}

/// `tracer top`'s options, checked.
#[derive(Debug)]
pub struct TopOptions {
    pub engine: Settings,
    pub once: bool,
    pub native: bool,
}

/// What `top` traces, when given nothing.
const HINT: &str = "give --pid PID, --all, --match REGEX, or a command after --, e.g. `tracer top -- python3 app.py`";
/// `--interval`'s default for `top`: a refresh a second.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

impl TopArgs {
    pub fn validate(self) -> Result<TopOptions> {
        // Sampled by default with --all, as `record` is.
        let sampling = self
            .sampling
            .check(self.targets.all || self.targets.matching.is_some())?;
        // A command started to be watched stops with the view.
        let launch = launch(self.command, None, false);
        let targets = self.targets.check(launch, HINT)?;
        let (bounds, ring_bytes) = self.bounds.check(None)?;
        Ok(TopOptions {
            engine: Settings {
                targets,
                probes: probe_settings(&sampling, ring_bytes),
                sampling: sampling.sampling,
                bounds,
                snapshot_every: self.interval.check(REFRESH_EVERY)?,
                // The objects view walks the heap itself, while it is open.
                walks: WalkSettings::default(),
            },
            once: self.once,
            native: self.native,
        })
    }
}
