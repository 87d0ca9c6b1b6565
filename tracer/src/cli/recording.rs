//! The options of a recording that `record`, `top` and the daemon share,
//! declared once each (flag, help, the daemon's configuration key) in four
//! groups, and their one check into the engine's settings: which processes
//! (`TargetArgs`), which allocations and how they are probed
//! (`SamplingArgs`), what ends or caps a recording (`BoundsArgs`,
//! `IntervalArgs`), and where its capture goes (`OutputArgs`).
//!
//! Each group is read by clap and, for the daemon, from its TOML file
//! (dashes as underscores): no field has a clap default, so that "not
//! given" can fall through to the file and then to the command's default,
//! and an unset field is left out when serialized (`daemon::config` merges
//! the command line over the file as tables).

use std::{ffi::OsString, path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::{
    recording::settings::{Bounds, LaunchSettings, ProbeSettings, TargetSettings},
    sampling::Sampling,
    sources::probes::LinkKind,
};

/// Which processes to trace.
#[derive(Clone, Debug, Default, PartialEq, Args, Deserialize, Serialize)]
#[serde(default)]
pub struct TargetArgs {
    /// Trace this running process and its descendants (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    #[serde(rename = "pid", skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,

    /// Trace every CPython process on the host: those running now and those
    /// started while recording, each reported on its own.
    #[arg(short, long, conflicts_with = "pids")]
    #[serde(skip_serializing_if = "is_false")]
    pub all: bool,

    /// Trace the CPython processes whose command line matches REGEX,
    /// running now and started later (one of --all's, chosen).
    #[arg(long = "match", value_name = "REGEX", conflicts_with_all = ["all", "pids"])]
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub matching: Option<String>,
}

/// Which allocations are recorded, and how the probes are made.
#[derive(Clone, Debug, Default, PartialEq, Args, Deserialize, Serialize)]
#[serde(default)]
pub struct SamplingArgs {
    /// Record a sample of the allocations instead of every one: on average
    /// one per N bytes allocated (Poisson, like tcmalloc), each weighted so
    /// that bytes and counts stay unbiased estimates. Frees of unsampled
    /// allocations are dropped in the kernel. Relative error of a total of
    /// B bytes: about sqrt(N / B). The mode for production, and the default
    /// of --all, --match and the daemon (N = 262144: 5% on 100 MB, 1.6% on
    /// 1 GB). From 1 to 1 TiB.
    #[arg(long, value_name = "N", conflicts_with = "exact")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_bytes: Option<u64>,

    /// Record every allocation, also where tracer samples by default.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub exact: bool,

    /// Also probe CPython's object allocator (PyObject_Malloc and friends),
    /// which serves objects of 512 bytes or less without calling malloc.
    /// Costs a probe per object allocation.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub pymalloc: bool,

    /// How uprobes are attached: uprobe sessions (Linux 6.13+: an untraced
    /// or unsampled call pays one trap, not two), multi-uprobe links (6.6+),
    /// or perf-event uprobes (any kernel, slow to remove). Default auto:
    /// the best the kernel has.
    #[arg(long, value_enum, value_name = "KIND")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_links: Option<ProbeLinks>,
}

/// What ends a recording, or bounds what it holds.
#[derive(Clone, Debug, Default, PartialEq, Args, Deserialize, Serialize)]
#[serde(default)]
pub struct BoundsArgs {
    /// Stop after this many seconds, at most a year (default: until every
    /// target exits, or Ctrl-C / SIGTERM).
    #[arg(short, long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,

    /// Ring buffer between the kernel and tracer, in MiB: a power of two
    /// from 1 to 1024 (default 32).
    #[arg(long, value_name = "MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_mb: Option<u32>,

    /// Track at most this many live allocations; past it, one is forgotten
    /// per new one, and counted (default: no limit; the daemon's 1000000).
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tracked: Option<u64>,
}

/// How often the recording's sinks are given a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Args, Deserialize, Serialize)]
#[serde(default)]
pub struct IntervalArgs {
    /// Seconds between snapshots, from 0.01 to 3600: `record` samples each
    /// process's memory and makes its capture readable this often (default
    /// 0.1), `top` refreshes (default 1), the daemon makes a window
    /// (default 15).
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<f64>,
}

/// Where the recording's capture goes.
#[derive(Clone, Debug, Default, PartialEq, Args, Deserialize, Serialize)]
#[serde(default)]
pub struct OutputArgs {
    /// Write the capture into this directory (`tracer report DIR` reads it
    /// again): `record` writes capture.tracer and its reports beside it,
    /// the daemon capture-NNNNNN.tracer segments.
    #[arg(short, long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,

    /// The most the capture may hold, in MiB, from 1 to 1048576: `record`
    /// stops recording there, with the reports of what was recorded
    /// (default 2048); the daemon deletes its oldest segments (default 1024).
    #[arg(long, value_name = "MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_capture_mb: Option<u64>,
}

/// Whether a flag is unset: left out when its group is serialized.
pub(crate) fn is_false(b: &bool) -> bool {
    !b
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeLinks {
    Auto,
    Session,
    Multi,
    Perf,
}

impl ProbeLinks {
    /// The kind of links to make; `Auto`: the best the running kernel has.
    pub fn resolve(self) -> Result<LinkKind> {
        Ok(match self {
            ProbeLinks::Auto => {
                let release = nix::sys::utsname::uname()?
                    .release()
                    .to_string_lossy()
                    .into_owned();
                LinkKind::for_kernel(&release)
            }
            ProbeLinks::Session => LinkKind::Session,
            ProbeLinks::Multi => LinkKind::Multi,
            ProbeLinks::Perf => LinkKind::Perf,
        })
    }
}

/// Longest time any option takes, in seconds (a year): beyond it a
/// value is a mistake, and nanoseconds of it would overflow.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;
/// --sample-bytes: at most 1 TiB between samples (the kernel multiplies it
/// by gaps of up to 2^20 in 64 bits).
const MAX_SAMPLE_BYTES: u64 = 1 << 40;
/// The mean bytes between samples where tracer samples by default (`--all`,
/// `--match`, the daemon): a total of B bytes is estimated within about
/// sqrt(N / B) (5% of 100 MB, 1.6% of 1 GB), and an allocation of 1 MiB or
/// more is nearly always recorded, while most small ones are not, and cost
/// no return trap with uprobe sessions (docs/overhead.md).
pub const PRODUCTION_SAMPLE_BYTES: u64 = 256 * 1024;
/// The largest ring buffer: the kernel's limit is near 4 GiB, far beyond
/// what any drain rate needs.
const MAX_RING_MB: u32 = 1024;
const DEFAULT_RING_MB: u32 = 32;
/// --interval: 10 ms at least (a snapshot more often than the ring is
/// drained, every 50 ms, is all snapshots), an hour at most.
const INTERVAL_SECS: std::ops::RangeInclusive<f64> = 0.01..=3600.0;
/// --max-capture-mb: 1 TiB at most.
const MAX_CAPTURE_MB: u64 = 1 << 20;

/// A number of seconds that is not negative, not NaN, and at most a year.
pub fn seconds(option: &str, value: f64) -> Result<f64> {
    if !(0.0..=MAX_SECONDS).contains(&value) {
        bail!("{option} must be a number of seconds from 0 to {MAX_SECONDS} (a year), not {value}");
    }
    Ok(value)
}

impl TargetArgs {
    /// What to trace, with `launch` (a command, for `record` and `top`);
    /// `hint` says what the command could be given instead of nothing.
    pub fn check(self, launch: Option<LaunchSettings>, hint: &str) -> Result<TargetSettings> {
        if self.pids.is_empty() && launch.is_none() && !self.all && self.matching.is_none() {
            bail!("nothing to trace: {hint}");
        }
        if self.all && self.matching.is_some() {
            bail!(
                "--match already chooses among every CPython process: give it or --all, not both"
            );
        }
        let matching = match &self.matching {
            Some(re) => Some(regex::Regex::new(re).map_err(|e| {
                anyhow::anyhow!(
                    "--match {re:?}: {}",
                    e.to_string().lines().last().unwrap_or("invalid")
                )
            })?),
            None => None,
        };
        Ok(TargetSettings {
            pids: self.pids,
            all: self.all || matching.is_some(),
            matching,
            launch,
        })
    }
}

/// The command to launch, if one was given after `--`.
pub fn launch(
    command: Vec<OsString>,
    user: Option<String>,
    detach: bool,
) -> Option<LaunchSettings> {
    (!command.is_empty()).then_some(LaunchSettings {
        command,
        user,
        detach,
    })
}

/// What `SamplingArgs` decide.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingChoice {
    pub sampling: Option<Sampling>,
    pub links: LinkKind,
    pub pymalloc: bool,
}

impl SamplingArgs {
    /// `sampled_by_default`: what the command records without
    /// --sample-bytes or --exact (the production rate, or every allocation).
    pub fn check(&self, sampled_by_default: bool) -> Result<SamplingChoice> {
        let sampling = match self.sample_bytes {
            Some(n) if !(1..=MAX_SAMPLE_BYTES).contains(&n) => bail!(
                "--sample-bytes must be from 1 to {MAX_SAMPLE_BYTES} (1 TiB), not {n} (--exact records every allocation)"
            ),
            Some(_) if self.exact => bail!("give --sample-bytes or --exact, not both"),
            Some(mean_bytes) => Some(Sampling { mean_bytes }),
            None if sampled_by_default && !self.exact => Some(Sampling {
                mean_bytes: PRODUCTION_SAMPLE_BYTES,
            }),
            None => None,
        };
        Ok(SamplingChoice {
            sampling,
            links: self.probe_links.unwrap_or(ProbeLinks::Auto).resolve()?,
            pymalloc: self.pymalloc,
        })
    }
}

impl BoundsArgs {
    /// `max_tracked`: the command's default for `--max-tracked`.
    pub fn check(&self, max_tracked: Option<u64>) -> Result<(Bounds, u32)> {
        let duration = match self.duration {
            Some(d) => match Duration::try_from_secs_f64(d) {
                Ok(t) if !t.is_zero() && d <= MAX_SECONDS => Some(t),
                _ => bail!(
                    "--duration must be a positive number of seconds up to {MAX_SECONDS} (a year), not {d}"
                ),
            },
            None => None,
        };
        let ring_mb = self.ring_mb.unwrap_or(DEFAULT_RING_MB);
        if !ring_mb.is_power_of_two() || ring_mb > MAX_RING_MB {
            bail!("--ring-mb must be a power of two from 1 to {MAX_RING_MB}, not {ring_mb}");
        }
        let max_tracked = self.max_tracked.or(max_tracked);
        if max_tracked == Some(0) {
            bail!("--max-tracked must be at least 1");
        }
        Ok((
            Bounds {
                duration,
                max_tracked,
            },
            ring_mb << 20,
        ))
    }
}

impl IntervalArgs {
    /// The snapshot period, `default` if not given.
    pub fn check(&self, default: Duration) -> Result<Duration> {
        let Some(secs) = self.interval else {
            return Ok(default);
        };
        if !INTERVAL_SECS.contains(&secs) {
            bail!(
                "--interval must be from {} to {} seconds (an hour), not {secs}",
                INTERVAL_SECS.start(),
                INTERVAL_SECS.end()
            );
        }
        Ok(Duration::from_secs_f64(secs))
    }
}

/// Where a capture goes and its size bound, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputChoice {
    pub dir: Option<PathBuf>,
    pub max_capture_bytes: u64,
}

impl OutputArgs {
    /// `default_mb`: the command's default for `--max-capture-mb`.
    pub fn check(self, default_mb: u64) -> Result<OutputChoice> {
        let mb = self.max_capture_mb.unwrap_or(default_mb);
        if !(1..=MAX_CAPTURE_MB).contains(&mb) {
            bail!("--max-capture-mb must be from 1 to {MAX_CAPTURE_MB}, not {mb}");
        }
        Ok(OutputChoice {
            dir: self.output,
            max_capture_bytes: mb << 20,
        })
    }
}

/// The engine's probe settings from the sampling choice and the ring.
pub fn probe_settings(choice: &SamplingChoice, ring_bytes: u32) -> ProbeSettings {
    ProbeSettings {
        links: choice.links,
        pymalloc: choice.pymalloc,
        ring_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_bounded_and_defaults_by_command() {
        let args = |sample_bytes, exact| SamplingArgs {
            sample_bytes,
            exact,
            ..SamplingArgs::default()
        };
        let mean = |a: SamplingArgs, by_default| {
            a.check(by_default)
                .expect("valid")
                .sampling
                .map(|s| s.mean_bytes)
        };
        assert_eq!(mean(args(None, false), true), Some(PRODUCTION_SAMPLE_BYTES));
        assert_eq!(mean(args(None, true), true), None);
        assert_eq!(mean(args(None, false), false), None);
        assert_eq!(mean(args(Some(1 << 40), false), false), Some(1 << 40));
        for bad in [0, (1 << 40) + 1, u64::MAX] {
            let e = args(Some(bad), false)
                .check(true)
                .expect_err("out of range");
            assert!(e.to_string().starts_with("--sample-bytes must be"), "{e}");
        }
    }

    #[test]
    fn durations_are_positive_and_at_most_a_year() {
        let check = |d| {
            BoundsArgs {
                duration: Some(d),
                ..BoundsArgs::default()
            }
            .check(None)
        };
        assert_eq!(
            check(2.5).expect("valid").0.duration,
            Some(Duration::from_millis(2500))
        );
        for bad in [0.0, -1.0, f64::NAN, MAX_SECONDS * 2.0, 1e300] {
            let e = check(bad).expect_err("out of range");
            assert!(e.to_string().starts_with("--duration must be"), "{e}");
        }
    }

    #[test]
    fn intervals_are_seconds_between_10_ms_and_an_hour() {
        let check = |i| IntervalArgs { interval: Some(i) }.check(Duration::from_secs(15));
        assert_eq!(
            IntervalArgs::default()
                .check(Duration::from_secs(15))
                .expect("default"),
            Duration::from_secs(15)
        );
        assert_eq!(check(0.5).expect("valid"), Duration::from_millis(500));
        for bad in [0.0, 0.001, 3601.0, -1.0, f64::NAN] {
            let e = check(bad).expect_err("out of range");
            assert!(e.to_string().starts_with("--interval must be"), "{e}");
        }
    }

    #[test]
    fn the_capture_bound_is_checked_with_the_commands_default() {
        let check = |mb| {
            OutputArgs {
                output: None,
                max_capture_mb: mb,
            }
            .check(2048)
        };
        assert_eq!(check(None).expect("default").max_capture_bytes, 2048 << 20);
        assert_eq!(check(Some(1)).expect("valid").max_capture_bytes, 1 << 20);
        for bad in [0, MAX_CAPTURE_MB + 1] {
            let e = check(Some(bad)).expect_err("out of range");
            assert!(e.to_string().starts_with("--max-capture-mb must be"), "{e}");
        }
    }

    #[test]
    fn match_chooses_among_every_cpython_process() {
        let targets = TargetArgs {
            matching: Some("gunicorn".into()),
            ..TargetArgs::default()
        }
        .check(None, "")
        .expect("valid");
        assert!(targets.all && targets.matching.is_some());
        let both = TargetArgs {
            all: true,
            matching: Some("x".into()),
            ..TargetArgs::default()
        };
        assert!(both.check(None, "").is_err());
        let bad = TargetArgs {
            matching: Some("(".into()),
            ..TargetArgs::default()
        };
        assert!(
            bad.check(None, "")
                .expect_err("bad regex")
                .to_string()
                .starts_with("--match")
        );
    }
}
