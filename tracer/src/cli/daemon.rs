//! `tracer daemon`'s options, as clap reads them: the shared groups of a
//! recording, and the daemon's own (`ExportArgs`: where windows go and how
//! they are labelled). Every group is also read from the `--config` file
//! under the same names (dashes as underscores); `daemon::config` merges
//! the two and checks them.

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::recording::{BoundsArgs, IntervalArgs, OutputArgs, SamplingArgs, TargetArgs};

/// `tracer daemon`: the target options of `record`, then where windows go.
/// Every option may also be set in the --config file under the same name
/// (dashes as underscores); the command line wins.
#[derive(Clone, Debug, Default, Args)]
pub struct DaemonArgs {
    /// A TOML file with the same keys as these options (dashes as
    /// underscores), plus push credentials; read again on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub targets: TargetArgs,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    #[command(flatten)]
    pub bounds: BoundsArgs,

    #[command(flatten)]
    pub interval: IntervalArgs,

    #[command(flatten)]
    pub output: OutputArgs,

    #[command(flatten)]
    pub export: ExportArgs,
}

/// Where the daemon's windows go, how they are labelled, and what it logs
/// and serves beside them.
#[derive(Clone, Debug, Default, PartialEq, Args, Deserialize, Serialize)]
#[serde(default)]
pub struct ExportArgs {
    /// Push every window to Grafana Pyroscope (or Alloy's
    /// pyroscope.receive_http) at this base URL, through /ingest. In the
    /// file: a URL, or a [pyroscope] table with url, tenant and credentials.
    #[arg(long, value_name = "URL")]
    #[serde(skip)]
    pub pyroscope: Option<String>,

    /// Push every window to Parca at this base URL (its HTTP API,
    /// /api/profiles/writeraw). In the file: as --pyroscope.
    #[arg(long, value_name = "URL")]
    #[serde(skip)]
    pub parca: Option<String>,

    /// A fixed label on every profile (repeatable; in the file also a
    /// [labels] table).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    #[serde(rename = "label", skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,

    /// Label each profile with its process's pid (one series per process
    /// instance: more series in the backend).
    #[arg(long)]
    #[serde(skip_serializing_if = "crate::cli::recording::is_false")]
    pub pid_label: bool,

    /// Keep windows that could not be pushed yet in this directory, sent
    /// when the backend is back (and after a restart).
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<PathBuf>,

    /// The most the spool may hold, in MiB (default 256).
    #[arg(long, value_name = "MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_spool_mb: Option<u64>,

    /// Serve Prometheus metrics at ADDR (PORT alone: 127.0.0.1:PORT).
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,

    /// Let --metrics listen on an address other than loopback.
    #[arg(long)]
    #[serde(skip_serializing_if = "crate::cli::recording::is_false")]
    pub metrics_any_address: bool,

    /// Log the growth ranking every N windows (default 20; 0: never).
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth_every: Option<u64>,

    /// Walk each process's heap for its live objects by type every SECS
    /// (default 60; 0: never), pushed as a `types` profile beside the
    /// memory windows.
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub types_every: Option<u64>,
}
