//! The daemon's settings: the command line over the `--config` TOML file
//! (`file`: the same keys, dashes as underscores, plus each backend's
//! tenant and credentials) over the defaults, checked into
//! `DaemonOptions`, with one line per bad value. Read again on SIGHUP:
//! labels and backends' URLs and credentials change in place; other keys
//! need a restart, and say so.

mod file;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Result, bail};
use serde::Deserialize;

use self::file::{ConfigFile, keys_of, read_secret};
use crate::{
    cli::{
        DaemonArgs, ExportArgs,
        recording::{
            BoundsArgs, IntervalArgs, OutputArgs, OutputChoice, SamplingArgs, TargetArgs,
            probe_settings,
        },
    },
    labels::{self, Labels},
    recording::settings::{Settings, WalkSettings},
    sinks::{
        push::{Auth, Endpoint},
        window::LabelSettings,
    },
};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
const DEFAULT_MAX_SPOOL_MB: u64 = 256;
const DEFAULT_MAX_CAPTURE_MB: u64 = 1024;
const DEFAULT_MAX_TRACKED: u64 = 1_000_000;
const DEFAULT_GROWTH_EVERY: u64 = 20;
/// A walk reads every arena of a process (tens of ms for a 100 MB heap,
/// at most 2 s): once a minute is a small cost for the growth per type.
const DEFAULT_TYPES_EVERY_S: u64 = 60;
/// A day: less often than that, a walk says little about growth.
const MAX_TYPES_EVERY_S: u64 = 86_400;
/// What `daemon` traces, when given nothing.
const HINT: &str = "give --pid PID, --all, or --match REGEX (on the command line or in --config)";

/// A backend: its URL alone, or a table with its tenant and credentials.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BackendFile {
    Url(String),
    Table(BackendTable),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendTable {
    url: Option<String>,
    tenant: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    bearer_token: Option<String>,
    bearer_token_file: Option<PathBuf>,
}

/// `tracer daemon`'s settings, checked.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub engine: Settings,
    pub output: OutputChoice,
    pub pyroscope: Option<Endpoint>,
    pub parca: Option<Endpoint>,
    pub labels: LabelSettings,
    pub spool_dir: Option<PathBuf>,
    pub max_spool_bytes: u64,
    pub metrics: Option<SocketAddr>,
    pub growth_every: u64,
    /// Every option's value as given (the command line over the file), by
    /// its key: what a reload compares.
    given: toml::Table,
}

/// The command line's option groups, each laid over the file's.
struct Given {
    targets: TargetArgs,
    sampling: SamplingArgs,
    bounds: BoundsArgs,
    interval: IntervalArgs,
    output: OutputArgs,
    export: ExportArgs,
}

impl Given {
    /// Every key an option group declares.
    fn keys() -> BTreeSet<&'static str> {
        [
            keys_of::<TargetArgs>(),
            keys_of::<SamplingArgs>(),
            keys_of::<BoundsArgs>(),
            keys_of::<IntervalArgs>(),
            keys_of::<OutputArgs>(),
            keys_of::<ExportArgs>(),
        ]
        .concat()
        .into_iter()
        .collect()
    }

    fn of(args: &DaemonArgs, file: &ConfigFile) -> Result<Self> {
        Ok(Self {
            targets: file.under(&args.targets)?,
            sampling: file.under(&args.sampling)?,
            bounds: file.under(&args.bounds)?,
            interval: file.under(&args.interval)?,
            output: file.under(&args.output)?,
            export: file.under(&args.export)?,
        })
    }

    /// Every value given, by key.
    fn table(&self) -> Result<toml::Table> {
        let mut table = toml::Table::new();
        let groups = [
            toml::Table::try_from(&self.targets),
            toml::Table::try_from(&self.sampling),
            toml::Table::try_from(&self.bounds),
            toml::Table::try_from(&self.interval),
            toml::Table::try_from(&self.output),
            toml::Table::try_from(&self.export),
        ];
        for group in groups {
            table.extend(group.map_err(|e| anyhow::anyhow!("the options: {e}"))?);
        }
        Ok(table)
    }
}

/// A backend URL: http or https, with a host, without a query.
fn check_url(url: &str, flag: &str) -> Result<String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("{flag} {url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => bail!("{flag} {url:?}: give an http:// or https:// URL, e.g. http://localhost:4040"),
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("{flag} {url:?} has no host");
    }
    if uri.query().is_some() {
        bail!("{flag} {url:?}: give the base URL, without a query");
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// A backend from its flag's URL over its key in the file.
fn endpoint(flag_url: Option<&String>, file: &ConfigFile, key: &str) -> Result<Option<Endpoint>> {
    let flag = format!("--{key}");
    let flag = flag.as_str();
    let file = match file.table.get(key) {
        Some(value) => Some(
            value
                .clone()
                .try_into::<BackendFile>()
                .map_err(|e| anyhow::anyhow!("{}: [{key}]: {}", file.at(key), e.message()))?,
        ),
        None => None,
    };
    let table = match file {
        Some(BackendFile::Url(url)) => BackendTable {
            url: Some(url),
            ..BackendTable::default()
        },
        Some(BackendFile::Table(t)) => t,
        None => BackendTable::default(),
    };
    let Some(url) = flag_url.cloned().or(table.url) else {
        if table.tenant.is_some() || table.username.is_some() || table.bearer_token.is_some() {
            bail!("{flag} has credentials in the configuration file but no url");
        }
        return Ok(None);
    };
    let secret =
        |inline: Option<String>, file: Option<PathBuf>, what: &str| -> Result<Option<String>> {
            match (inline, file) {
                (Some(_), Some(_)) => bail!("{flag}: give {what} or {what}_file, not both"),
                (Some(s), None) => Ok(Some(s)),
                (None, Some(path)) => Ok(Some(read_secret(&path, &format!("{flag} {what}_file"))?)),
                (None, None) => Ok(None),
            }
        };
    let password = secret(table.password, table.password_file, "password")?;
    let bearer = secret(table.bearer_token, table.bearer_token_file, "bearer_token")?;
    let auth = match (table.username, password, bearer) {
        (Some(_), _, Some(_)) => bail!("{flag}: give basic auth or a bearer token, not both"),
        (Some(username), password, None) => Some(Auth::Basic {
            username,
            password: password.unwrap_or_default(),
        }),
        (None, Some(_), _) => bail!("{flag}: a password needs a username"),
        (None, None, Some(token)) => Some(Auth::Bearer(token)),
        (None, None, None) => None,
    };
    if let Some(t) = &table.tenant
        && (t.is_empty() || t.chars().any(|c| c.is_control()))
    {
        bail!("{flag}: the tenant must be a non-empty name without control characters");
    }
    Ok(Some(Endpoint {
        url: check_url(&url, flag)?,
        tenant: table.tenant,
        auth,
    }))
}

/// `K=V` pairs into labels, each name checked.
fn parse_labels(pairs: &[String], into: &mut Labels) -> Result<()> {
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("--label {pair:?}: give KEY=VALUE, e.g. --label team=payments");
        };
        insert_label(k.trim(), v, into)?;
    }
    Ok(())
}

fn insert_label(k: &str, v: &str, into: &mut Labels) -> Result<()> {
    if !labels::valid_name(k) {
        bail!(
            "label name {k:?}: use letters, digits and _, not starting with a digit or __ (Prometheus' rule, which Parca checks)"
        );
    }
    into.insert(k.to_owned(), labels::clean_value(v));
    Ok(())
}

/// `--metrics`: ADDR:PORT, or PORT alone on loopback.
fn metrics_addr(text: &str, any_address: bool) -> Result<SocketAddr> {
    let addr = match text.parse::<u16>() {
        Ok(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        Err(_) => text.parse().map_err(|_| {
            anyhow::anyhow!("--metrics {text:?}: give ADDR:PORT (e.g. 127.0.0.1:9464) or a port")
        })?,
    };
    if !addr.ip().is_loopback() && !any_address {
        bail!(
            "--metrics {addr}: not a loopback address; add --metrics-any-address to serve metrics to other hosts"
        );
    }
    Ok(addr)
}

/// The command line over the configuration file (if any) over defaults.
pub fn resolve(args: &DaemonArgs) -> Result<DaemonOptions> {
    let file = match &args.config {
        Some(path) => ConfigFile::read(path, &Given::keys())?,
        None => ConfigFile::default(),
    };
    let given = Given::of(args, &file)?;
    let sampling = given.sampling.check(true)?;
    let (bounds, ring_bytes) = given.bounds.check(Some(DEFAULT_MAX_TRACKED))?;
    let interval = given.interval.check(DEFAULT_INTERVAL)?;
    let output = given.output.clone().check(DEFAULT_MAX_CAPTURE_MB)?;
    let export = &given.export;
    // URLs on the command line, tables in the file: read from each.
    let pyroscope = endpoint(args.export.pyroscope.as_ref(), &file, "pyroscope")?;
    let parca = endpoint(args.export.parca.as_ref(), &file, "parca")?;
    let mut fixed = Labels::new();
    if let Some(table) = file.table.get("labels") {
        let table: BTreeMap<String, String> = table
            .clone()
            .try_into()
            .map_err(|e| anyhow::anyhow!("{}: [labels]: {}", file.at("labels"), e.message()))?;
        for (k, v) in table {
            insert_label(&k, &v, &mut fixed)?;
        }
    }
    // Labels add up: the file's, then the command line's.
    if let Some(list) = file.table.get("label") {
        let list: Vec<String> = list
            .clone()
            .try_into()
            .map_err(|e| anyhow::anyhow!("{}: label: {}", file.at("label"), e.message()))?;
        parse_labels(&list, &mut fixed)?;
    }
    parse_labels(&args.export.labels, &mut fixed)?;
    // service_name, host, container_id, pod_uid, process and pid at most.
    let found = 5 + usize::from(export.pid_label);
    if fixed.len() + found > labels::MAX_LABELS {
        bail!(
            "{} fixed labels: at most {} besides the {found} tracer sets (Pyroscope takes 30 labels a series, 3 of them its own)",
            fixed.len(),
            labels::MAX_LABELS - found
        );
    }
    let metrics = match &export.metrics {
        Some(text) => Some(metrics_addr(text, export.metrics_any_address)?),
        None => None,
    };
    let types_every = export.types_every.unwrap_or(DEFAULT_TYPES_EVERY_S);
    if types_every > MAX_TYPES_EVERY_S {
        bail!(
            "--types-every must be from 1 to {MAX_TYPES_EVERY_S} seconds (a day), or 0 for no walks, not {types_every}"
        );
    }
    let types_every = (types_every > 0).then(|| Duration::from_secs(types_every));
    let table = given.table()?;
    let targets = given.targets.check(None, HINT)?;
    let export = given.export;
    Ok(DaemonOptions {
        engine: Settings {
            targets,
            probes: probe_settings(&sampling, ring_bytes),
            sampling: sampling.sampling,
            bounds,
            snapshot_every: interval,
            walks: WalkSettings {
                types: types_every.is_some(),
                every: types_every,
            },
        },
        output,
        pyroscope,
        parca,
        labels: LabelSettings {
            fixed,
            pid: export.pid_label,
        },
        spool_dir: export.spool_dir,
        max_spool_bytes: export
            .max_spool_mb
            .unwrap_or(DEFAULT_MAX_SPOOL_MB)
            .saturating_mul(1 << 20),
        metrics,
        growth_every: export.growth_every.unwrap_or(DEFAULT_GROWTH_EVERY),
        given: table,
    })
}

/// What a reload changes in place: labels, and each backend's URL and
/// credentials (not whether it is pushed to).
const RELOADED: [&str; 3] = ["label", "pid_label", "labels"];

/// What a reload changed that only a restart applies, by option name.
pub fn needs_restart(old: &DaemonOptions, new: &DaemonOptions) -> Vec<String> {
    let keys: BTreeSet<&String> = old.given.keys().chain(new.given.keys()).collect();
    let mut changed: Vec<String> = keys
        .into_iter()
        .filter(|k| !RELOADED.contains(&k.as_str()) && old.given.get(*k) != new.given.get(*k))
        .cloned()
        .collect();
    if old.pyroscope.is_some() != new.pyroscope.is_some() {
        changed.push("pyroscope".into());
    }
    if old.parca.is_some() != new.parca.is_some() {
        changed.push("parca".into());
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Sampling;

    fn args() -> DaemonArgs {
        DaemonArgs {
            targets: TargetArgs {
                all: true,
                ..TargetArgs::default()
            },
            ..DaemonArgs::default()
        }
    }

    fn with_config(text: &str, args: &mut DaemonArgs) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp");
        std::fs::write(file.path(), text).expect("write");
        args.config = Some(file.path().to_path_buf());
        file
    }

    #[test]
    fn defaults_sample_at_the_production_rate() {
        let o = resolve(&args()).expect("resolve");
        assert_eq!(
            o.engine.sampling,
            Some(Sampling {
                mean_bytes: crate::cli::recording::PRODUCTION_SAMPLE_BYTES
            })
        );
        assert_eq!(o.engine.snapshot_every, Duration::from_secs(15));
        let mut exact = args();
        exact.sampling.exact = true;
        assert_eq!(resolve(&exact).expect("exact").engine.sampling, None);
        let mut a = args();
        let _f = with_config("exact = true\n", &mut a);
        assert_eq!(
            resolve(&a).expect("exact in the file").engine.sampling,
            None
        );
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let mut a = args();
        a.export.labels = vec!["team=cli".into()];
        a.interval.interval = Some(2.0);
        let _f = with_config(
            "interval = 9\nlabel = [\"zone=a\"]\n[labels]\nteam = \"file\"\n[pyroscope]\nurl = \"http://p:4040/\"\ntenant = \"t1\"\nusername = \"u\"\npassword = \"p\"\n",
            &mut a,
        );
        let o = resolve(&a).expect("resolve");
        assert_eq!(o.engine.snapshot_every, Duration::from_secs(2));
        assert_eq!(o.labels.fixed["team"], "cli");
        assert_eq!(o.labels.fixed["zone"], "a");
        let p = o.pyroscope.expect("pyroscope");
        assert_eq!(p.url, "http://p:4040");
        assert_eq!(p.tenant.as_deref(), Some("t1"));
        assert_eq!(
            p.auth,
            Some(Auth::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        let mut a = args();
        let _f = with_config("interval = 9\nlabel = [\"zone=a\"]\n", &mut a);
        let o = resolve(&a).expect("resolve");
        assert_eq!(o.engine.snapshot_every, Duration::from_secs(9));
        assert_eq!(o.labels.fixed["zone"], "a");
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        let err = |a: DaemonArgs| {
            let e = format!("{:#}", resolve(&a).expect_err("must fail"));
            assert_eq!(e.lines().count(), 1, "{e}");
            e
        };
        assert!(err(DaemonArgs::default()).contains("nothing to trace"));
        let mut a = args();
        a.export.pyroscope = Some("ftp://x".into());
        assert!(err(a).contains("http://"));
        let mut a = args();
        a.export.labels = vec!["bad-name=1".into()];
        assert!(err(a).contains("label name"));
        let mut a = args();
        a.export.metrics = Some("0.0.0.0:9464".into());
        assert!(err(a).contains("--metrics-any-address"));
        let mut a = args();
        let _f = with_config("intervall = 3\n", &mut a);
        let e = err(a);
        assert!(e.contains(":1:") && e.contains("intervall"), "{e}");
        let mut a = args();
        let _f = with_config("pid = [1]\ninterval = \"often\"\n", &mut a);
        let e = err(a);
        assert!(e.contains(":2:") && e.contains("interval"), "{e}");
        let mut a = args();
        a.export.labels = (0..30).map(|i| format!("l{i}=v")).collect();
        assert!(err(a).contains("fixed labels"));
        let mut a = args();
        let _f = with_config("types_every = 100000\n", &mut a);
        let e = err(a);
        assert!(e.contains("--types-every") && e.contains("100000"), "{e}");
    }

    #[test]
    fn the_file_is_bounded_as_the_command_line_is() {
        let err = |text: &str| {
            let mut a = args();
            let _f = with_config(text, &mut a);
            format!("{:#}", resolve(&a).expect_err("out of range"))
        };
        assert!(err("sample_bytes = 2199023255553\n").contains("--sample-bytes must be"));
        assert!(err("duration = 1e12\n").contains("--duration must be"));
        assert!(err("interval = 0\n").contains("--interval must be"));
        assert!(err("max_capture_mb = 0\n").contains("--max-capture-mb must be"));
    }

    #[test]
    fn types_are_walked_every_minute_unless_told() {
        let o = resolve(&args()).expect("resolve");
        assert_eq!(o.engine.walks.every, Some(Duration::from_secs(60)));
        let mut a = args();
        let _f = with_config("types_every = 0\n", &mut a);
        assert_eq!(resolve(&a).expect("off").engine.walks.every, None);
        a.export.types_every = Some(5);
        assert_eq!(
            resolve(&a).expect("cli").engine.walks.every,
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn reloads_say_what_needs_a_restart() {
        let a = resolve(&args()).expect("a");
        let mut labelled = args();
        labelled.export.labels = vec!["team=x".into()];
        let b = resolve(&labelled).expect("b");
        assert!(needs_restart(&a, &b).is_empty());
        labelled.interval.interval = Some(1.0);
        let c = resolve(&labelled).expect("c");
        assert_eq!(needs_restart(&a, &c), ["interval"]);
    }
}
