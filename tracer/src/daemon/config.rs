//! The daemon's settings: the command line over the `--config` TOML file
//! (the same keys, dashes as underscores, plus each backend's tenant and
//! credentials) over the defaults, checked into `DaemonOptions`, with one
//! line per bad value. Read again on SIGHUP: labels and backends' URLs and
//! credentials change in place; other keys need a restart, and say so.

use std::{
    collections::BTreeMap,
    fs::File,
    io::Read as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::{
    cli::{DaemonArgs, PRODUCTION_SAMPLE_BYTES},
    labels::{self, Labels},
    sampling::Sampling,
    sinks::{
        push::{Auth, Endpoint},
        window::LabelSettings,
    },
};

/// A configuration file is a page or two; more is not one.
const MAX_CONFIG: u64 = 1 << 20;
/// A credential file holds one token or password.
const MAX_SECRET: u64 = 64 << 10;
const DEFAULT_INTERVAL_S: u64 = 15;
const DEFAULT_MAX_SPOOL_MB: u64 = 256;
const DEFAULT_MAX_CAPTURE_MB: u64 = 1024;
const DEFAULT_MAX_TRACKED: u64 = 1_000_000;
const DEFAULT_GROWTH_EVERY: u64 = 20;
/// A walk reads every arena of a process (tens of ms for a 100 MB heap,
/// at most 2 s): once a minute is a small cost for the growth per type.
const DEFAULT_TYPES_EVERY_S: u64 = 60;
/// A day: less often than that, a walk says little about growth.
const MAX_TYPES_EVERY_S: u64 = 86_400;
const DEFAULT_RING_MB: u32 = 32;
const MAX_RING_MB: u32 = 1024;

/// The TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    pid: Option<Vec<u32>>,
    all: Option<bool>,
    #[serde(rename = "match")]
    matching: Option<String>,
    interval: Option<u64>,
    pyroscope: Option<BackendFile>,
    parca: Option<BackendFile>,
    /// `label = ["team=db"]`, as the flag.
    label: Option<Vec<String>>,
    /// `[labels]` team = "db".
    labels: Option<BTreeMap<String, String>>,
    pid_label: Option<bool>,
    spool_dir: Option<PathBuf>,
    max_spool_mb: Option<u64>,
    metrics: Option<String>,
    metrics_any_address: Option<bool>,
    output: Option<PathBuf>,
    max_capture_mb: Option<u64>,
    sample_bytes: Option<u64>,
    exact: Option<bool>,
    max_tracked: Option<u64>,
    growth_every: Option<u64>,
    types_every: Option<u64>,
    pymalloc: Option<bool>,
    duration: Option<f64>,
    ring_mb: Option<u32>,
}

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
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonOptions {
    pub pids: Vec<u32>,
    pub all: bool,
    pub matching: Option<String>,
    pub interval: Duration,
    pub pyroscope: Option<Endpoint>,
    pub parca: Option<Endpoint>,
    pub labels: LabelSettings,
    pub spool_dir: Option<PathBuf>,
    pub max_spool_bytes: u64,
    pub metrics: Option<SocketAddr>,
    pub output: Option<PathBuf>,
    pub max_capture_bytes: u64,
    pub sampling: Option<Sampling>,
    pub max_tracked: u64,
    pub growth_every: u64,
    /// How often each process's heap is walked for its objects by type.
    pub types_every: Option<Duration>,
    pub pymalloc: bool,
    pub duration: Option<Duration>,
    pub ring_bytes: u32,
}

fn read_bounded(path: &Path, max: u64, what: &str) -> Result<String> {
    let file =
        File::open(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    let md = file.metadata()?;
    if !md.is_file() {
        bail!("{what} {} is not a regular file", path.display());
    }
    if md.len() > max {
        bail!("{what} {} is larger than {max} bytes", path.display());
    }
    let mut text = String::new();
    file.take(max)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {what} {} as UTF-8 text", path.display()))?;
    Ok(text)
}

fn read_config(path: &Path) -> Result<ConfigFile> {
    let text = read_bounded(path, MAX_CONFIG, "the configuration file")?;
    toml::from_str(&text).map_err(|e| {
        let message = e.message().lines().next().unwrap_or("invalid").to_owned();
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        match line {
            Some(line) => anyhow::anyhow!("{}:{line}: {message}", path.display()),
            None => anyhow::anyhow!("{}: {message}", path.display()),
        }
    })
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

fn endpoint(
    flag_url: Option<&String>,
    file: Option<BackendFile>,
    flag: &str,
) -> Result<Option<Endpoint>> {
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
                (None, Some(path)) => Ok(Some(
                    read_bounded(&path, MAX_SECRET, &format!("{flag} {what}_file"))?
                        .trim()
                        .to_owned(),
                )),
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
        Some(path) => read_config(path)?,
        None => ConfigFile::default(),
    };
    let pids = if args.pids.is_empty() {
        file.pid.unwrap_or_default()
    } else {
        args.pids.clone()
    };
    let matching = args.matching.clone().or(file.matching);
    let all = args.all || file.all.unwrap_or(false);
    if let Some(re) = &matching {
        regex::Regex::new(re).map_err(|e| {
            anyhow::anyhow!(
                "--match {re:?}: {}",
                e.to_string().lines().last().unwrap_or("invalid")
            )
        })?;
        if all {
            bail!(
                "--match already chooses among every CPython process: give it or --all, not both"
            );
        }
    }
    if pids.is_empty() && !all && matching.is_none() {
        bail!(
            "nothing to trace: give --pid PID, --all, or --match REGEX (on the command line or in --config)"
        );
    }
    let interval = args
        .interval
        .or(file.interval)
        .unwrap_or(DEFAULT_INTERVAL_S);
    if interval == 0 {
        bail!("--interval must be at least 1 second");
    }
    let pyroscope = endpoint(args.pyroscope.as_ref(), file.pyroscope, "--pyroscope")?;
    let parca = endpoint(args.parca.as_ref(), file.parca, "--parca")?;
    let mut fixed = Labels::new();
    for (k, v) in file.labels.unwrap_or_default() {
        insert_label(&k, &v, &mut fixed)?;
    }
    parse_labels(&file.label.unwrap_or_default(), &mut fixed)?;
    parse_labels(&args.labels, &mut fixed)?;
    let pid_label = args.pid_label || file.pid_label.unwrap_or(false);
    // service_name, host, container_id, pod_uid, process and pid at most.
    let found = 5 + usize::from(pid_label);
    if fixed.len() + found > labels::MAX_LABELS {
        bail!(
            "{} fixed labels: at most {} besides the {found} tracer sets (Pyroscope takes 30 labels a series, 3 of them its own)",
            fixed.len(),
            labels::MAX_LABELS - found
        );
    }
    let spool_dir = args.spool_dir.clone().or(file.spool_dir);
    let max_spool_mb = args
        .max_spool_mb
        .or(file.max_spool_mb)
        .unwrap_or(DEFAULT_MAX_SPOOL_MB);
    let any_address = args.metrics_any_address || file.metrics_any_address.unwrap_or(false);
    let metrics = match args.metrics.clone().or(file.metrics) {
        Some(text) => Some(metrics_addr(&text, any_address)?),
        None => None,
    };
    let exact = args.exact || (args.sample_bytes.is_none() && file.exact.unwrap_or(false));
    let sample_bytes = if exact {
        0
    } else {
        args.sample_bytes
            .or(file.sample_bytes)
            .unwrap_or(PRODUCTION_SAMPLE_BYTES)
    };
    let duration = match args.duration.or(file.duration) {
        Some(d) => match Duration::try_from_secs_f64(d) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => bail!("--duration must be a positive number of seconds, not {d}"),
        },
        None => None,
    };
    let types_every = args
        .types_every
        .or(file.types_every)
        .unwrap_or(DEFAULT_TYPES_EVERY_S);
    if types_every > MAX_TYPES_EVERY_S {
        bail!(
            "--types-every must be from 1 to {MAX_TYPES_EVERY_S} seconds (a day), or 0 for no walks, not {types_every}"
        );
    }
    let ring_mb = args.ring_mb.or(file.ring_mb).unwrap_or(DEFAULT_RING_MB);
    if !ring_mb.is_power_of_two() || ring_mb > MAX_RING_MB {
        bail!("--ring-mb must be a power of two from 1 to {MAX_RING_MB}, not {ring_mb}");
    }
    Ok(DaemonOptions {
        pids,
        all,
        matching,
        interval: Duration::from_secs(interval),
        pyroscope,
        parca,
        labels: LabelSettings {
            fixed,
            pid: pid_label,
        },
        spool_dir,
        max_spool_bytes: max_spool_mb.saturating_mul(1 << 20),
        metrics,
        output: args.output.clone().or(file.output),
        max_capture_bytes: args
            .max_capture_mb
            .or(file.max_capture_mb)
            .unwrap_or(DEFAULT_MAX_CAPTURE_MB)
            .saturating_mul(1 << 20),
        sampling: (sample_bytes > 0).then_some(Sampling {
            mean_bytes: sample_bytes,
        }),
        max_tracked: args
            .max_tracked
            .or(file.max_tracked)
            .unwrap_or(DEFAULT_MAX_TRACKED),
        growth_every: args
            .growth_every
            .or(file.growth_every)
            .unwrap_or(DEFAULT_GROWTH_EVERY),
        types_every: (types_every > 0).then(|| Duration::from_secs(types_every)),
        pymalloc: args.pymalloc || file.pymalloc.unwrap_or(false),
        duration,
        ring_bytes: ring_mb << 20,
    })
}

/// What a reload changed that only a restart applies, by option name.
pub fn needs_restart(old: &DaemonOptions, new: &DaemonOptions) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("pid", old.pids != new.pids);
    check("all", old.all != new.all);
    check("match", old.matching != new.matching);
    check("interval", old.interval != new.interval);
    check(
        "pyroscope",
        old.pyroscope.is_some() != new.pyroscope.is_some(),
    );
    check("parca", old.parca.is_some() != new.parca.is_some());
    check("spool_dir", old.spool_dir != new.spool_dir);
    check("max_spool_mb", old.max_spool_bytes != new.max_spool_bytes);
    check("metrics", old.metrics != new.metrics);
    check("output", old.output != new.output);
    check(
        "max_capture_mb",
        old.max_capture_bytes != new.max_capture_bytes,
    );
    check("sample_bytes", old.sampling != new.sampling);
    check("max_tracked", old.max_tracked != new.max_tracked);
    check("growth_every", old.growth_every != new.growth_every);
    check("types_every", old.types_every != new.types_every);
    check("pymalloc", old.pymalloc != new.pymalloc);
    check("ring_mb", old.ring_bytes != new.ring_bytes);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> DaemonArgs {
        DaemonArgs {
            all: true,
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
            o.sampling,
            Some(Sampling {
                mean_bytes: PRODUCTION_SAMPLE_BYTES
            })
        );
        assert_eq!(o.interval, Duration::from_secs(15));
        let exact = resolve(&DaemonArgs {
            exact: true,
            ..args()
        })
        .expect("exact");
        assert_eq!(exact.sampling, None);
        let zero = resolve(&DaemonArgs {
            sample_bytes: Some(0),
            ..args()
        })
        .expect("zero");
        assert_eq!(zero.sampling, None);
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let mut a = DaemonArgs {
            labels: vec!["team=cli".into()],
            interval: Some(2),
            ..args()
        };
        let _f = with_config(
            "interval = 9\nlabel = [\"zone=a\"]\n[labels]\nteam = \"file\"\n[pyroscope]\nurl = \"http://p:4040/\"\ntenant = \"t1\"\nusername = \"u\"\npassword = \"p\"\n",
            &mut a,
        );
        let o = resolve(&a).expect("resolve");
        assert_eq!(o.interval, Duration::from_secs(2));
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
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        let err = |a: DaemonArgs| {
            let e = format!("{:#}", resolve(&a).expect_err("must fail"));
            assert_eq!(e.lines().count(), 1, "{e}");
            e
        };
        assert!(err(DaemonArgs::default()).contains("nothing to trace"));
        let e = err(DaemonArgs {
            pyroscope: Some("ftp://x".into()),
            ..args()
        });
        assert!(e.contains("http://"), "{e}");
        let e = err(DaemonArgs {
            labels: vec!["bad-name=1".into()],
            ..args()
        });
        assert!(e.contains("label name"), "{e}");
        let e = err(DaemonArgs {
            metrics: Some("0.0.0.0:9464".into()),
            ..args()
        });
        assert!(e.contains("--metrics-any-address"), "{e}");
        let mut a = args();
        let _f = with_config("intervall = 3\n", &mut a);
        let e = err(a);
        assert!(e.contains(":1:") && e.contains("intervall"), "{e}");
        let many = (0..30).map(|i| format!("l{i}=v")).collect();
        let e = err(DaemonArgs {
            labels: many,
            ..args()
        });
        assert!(e.contains("fixed labels"), "{e}");
        let mut a = args();
        let _f = with_config("types_every = 100000\n", &mut a);
        let e = err(a);
        assert!(e.contains("--types-every") && e.contains("100000"), "{e}");
    }

    #[test]
    fn types_are_walked_every_minute_unless_told() {
        let o = resolve(&args()).expect("resolve");
        assert_eq!(o.types_every, Some(Duration::from_secs(60)));
        let mut a = args();
        let _f = with_config("types_every = 0\n", &mut a);
        assert_eq!(resolve(&a).expect("off").types_every, None);
        let cli = DaemonArgs {
            types_every: Some(5),
            ..a
        };
        assert_eq!(
            resolve(&cli).expect("cli").types_every,
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn reloads_say_what_needs_a_restart() {
        let a = resolve(&args()).expect("a");
        let mut b = a.clone();
        b.labels.fixed.insert("team".into(), "x".into());
        assert!(needs_restart(&a, &b).is_empty());
        b.interval = Duration::from_secs(1);
        assert_eq!(needs_restart(&a, &b), ["interval"]);
    }
}
