//! `tracer record`'s options: the shared groups of a recording, what is
//! `record`'s own (a command to start, the reports' view, heap walks), and
//! their checked values.

use std::{ffi::OsString, time::Duration};

use anyhow::Result;
use clap::Args;

use super::{
    ViewArgs,
    recording::{
        BoundsArgs, IntervalArgs, OutputArgs, OutputChoice, SamplingArgs, TargetArgs, launch,
        probe_settings,
    },
};
use crate::{
    recording::settings::{Settings, WalkSettings},
    report::analysis::{self, Temporary},
};

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub targets: TargetArgs,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    #[command(flatten)]
    pub view: ViewArgs,

    #[command(flatten)]
    pub bounds: BoundsArgs,

    #[command(flatten)]
    pub interval: IntervalArgs,

    /// --interval in milliseconds (the option's earlier name).
    #[arg(long, value_name = "MS", hide = true, conflicts_with = "interval")]
    pub sample_ms: Option<u64>,

    #[command(flatten)]
    pub output: OutputArgs,

    /// Run the command as this user (a name or a uid). Default: the user
    /// who ran tracer (through sudo: SUDO_UID and SUDO_GID).
    #[arg(long, value_name = "USER", requires = "command")]
    pub user: Option<String>,

    /// Leave the command running when tracer stops (by default it gets
    /// SIGTERM, then SIGKILL if it is still running 5 seconds later).
    #[arg(long, requires = "command")]
    pub detach_command: bool,

    /// Do not read the types of live Python objects (walks of the heap
    /// when tracing begins and when the leak set is taken), nor hold a
    /// launched command at its finalization while they are read.
    #[arg(long)]
    pub no_types: bool,

    /// The command to start and trace from its first allocation.
    #[arg(last = true, value_name = "COMMAND", conflicts_with_all = ["all", "matching"])]
    pub command: Vec<OsString>,
}

/// `tracer record`'s options, checked.
#[derive(Debug)]
pub struct RecordOptions {
    pub engine: Settings,
    pub output: OutputChoice,
    pub reports: ReportSettings,
}

/// How the end-of-run reports are made and shown.
#[derive(Clone, Copy, Debug)]
pub struct ReportSettings {
    pub analysis: analysis::Options,
    /// Entries per report and process.
    pub top: usize,
}

/// What `record` traces, when given nothing.
const HINT: &str = "give --pid PID, --all, --match REGEX, or a command after --, e.g. `tracer record -- python3 app.py`";
/// `--interval`'s default for `record`: memory over time at 10 Hz.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// `--max-capture-mb`'s default for `record`: about an hour of a busy
/// service (docs/captures.md).
const DEFAULT_CAPTURE_MB: u64 = 2048;

impl RecordArgs {
    pub fn validate(mut self) -> Result<RecordOptions> {
        if let Some(ms) = self.sample_ms {
            self.interval.interval = Some(ms as f64 / 1e3);
        }
        let sampling = self
            .sampling
            .check(self.targets.all || self.targets.matching.is_some())?;
        let launch = launch(self.command, self.user, self.detach_command);
        let targets = self.targets.check(launch, HINT)?;
        let (bounds, ring_bytes) = self.bounds.check(None)?;
        let snapshot_every = self.interval.check(SAMPLE_EVERY)?;
        let output = self.output.check(DEFAULT_CAPTURE_MB)?;
        self.view.check()?;
        Ok(RecordOptions {
            engine: Settings {
                targets,
                probes: probe_settings(&sampling, ring_bytes),
                sampling: sampling.sampling,
                bounds,
                snapshot_every,
                walks: WalkSettings {
                    types: !self.no_types,
                    every: None,
                },
            },
            output,
            reports: ReportSettings {
                analysis: analysis::Options {
                    view: self.view.view(),
                    min_age_ns: self.view.min_age_ns(),
                    temporary: Temporary::Within { ns: 1_000_000 },
                    include_thread_stacks: self.view.include_thread_stacks,
                },
                top: self.view.top,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{
        cli::{Cli, Command, recording::PRODUCTION_SAMPLE_BYTES},
        sources::probes::LinkKind,
    };

    fn record(args: &[&str]) -> Result<RecordOptions> {
        let cli = Cli::try_parse_from(["tracer", "record"].iter().chain(args))?;
        let Command::Record(record) = cli.command else {
            unreachable!("parsed as record");
        };
        record.validate()
    }

    fn mean_bytes(args: &[&str]) -> Option<u64> {
        record(args)
            .expect("valid")
            .engine
            .sampling
            .map(|s| s.mean_bytes)
    }

    #[test]
    fn all_samples_by_default_and_named_targets_are_exact() {
        assert_eq!(mean_bytes(&["--all"]), Some(PRODUCTION_SAMPLE_BYTES));
        assert_eq!(mean_bytes(&["--all", "--exact"]), None);
        assert_eq!(mean_bytes(&["--all", "--sample-bytes", "4096"]), Some(4096));
        assert_eq!(mean_bytes(&["--pid", "1"]), None);
        assert_eq!(mean_bytes(&["--", "python3", "app.py"]), None);
        assert!(record(&["--all", "--exact", "--sample-bytes", "1"]).is_err());
        assert!(record(&["--all", "--sample-bytes", "0"]).is_err());
    }

    #[test]
    fn probe_links_are_chosen_or_forced() {
        let links = |kind: &str| {
            record(&["--all", "--probe-links", kind])
                .expect("valid")
                .engine
                .probes
                .links
        };
        assert_eq!(links("session"), LinkKind::Session);
        assert_eq!(links("multi"), LinkKind::Multi);
        assert_eq!(links("perf"), LinkKind::Perf);
        assert!(record(&["--all", "--probe-links", "kprobe"]).is_err());
    }

    #[test]
    fn sample_ms_is_the_interval_in_milliseconds() {
        let every = |args: &[&str]| record(args).expect("valid").engine.snapshot_every;
        assert_eq!(every(&["--pid", "1"]), Duration::from_millis(100));
        assert_eq!(
            every(&["--pid", "1", "--sample-ms", "50"]),
            Duration::from_millis(50)
        );
        assert_eq!(
            every(&["--pid", "1", "--interval", "2"]),
            Duration::from_secs(2)
        );
        assert!(record(&["--pid", "1", "--sample-ms", "5"]).is_err());
    }
}
