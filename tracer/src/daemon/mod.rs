//! `tracer daemon`: one recording that runs for weeks. Its sinks are the
//! windows (pushed to Pyroscope and Parca by the export and push threads)
//! and, with `-o`, a rotating capture; exited processes are forgotten once
//! their last window is out; the heap model tracks at most `--max-tracked`
//! allocations. SIGHUP reads the configuration again; SIGTERM flushes the
//! last window within 15 seconds. docs/daemon.md says how to run it.

pub mod config;
mod metrics;
mod notify;

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context as _, Result};
use log::{info, warn};
use tokio::signal::unix::{SignalKind, signal};

use self::config::{DaemonOptions, needs_restart, resolve};
use crate::{
    cli::DaemonArgs,
    recording::{Engine, Hooks},
    report::analysis,
    sinks::{
        Sink,
        capture::CaptureSink,
        export::{ExportSettings, Exporter},
        push::{Backend, Endpoint, PushSettings, Pusher},
        stats::{SinkStats, Stats},
        window::{LabelSettings, WindowSink},
    },
    symbolize::feed::Symbols,
};

/// What a shutdown may spend pushing what is queued: SIGTERM is answered
/// within 15 s (systemd's and Kubernetes' grace periods are longer).
const FLUSH_WITHIN: Duration = Duration::from_secs(11);

/// What a reload may change in place.
struct Live {
    labels: Arc<RwLock<LabelSettings>>,
    pyroscope: Option<Arc<RwLock<Endpoint>>>,
    parca: Option<Arc<RwLock<Endpoint>>>,
}

fn replace<T>(lock: &RwLock<T>, value: T) {
    if let Ok(mut guard) = lock.write() {
        *guard = value;
    }
}

/// Reads the configuration again: labels and backends change in place.
fn reload(args: &DaemonArgs, current: &mut DaemonOptions, live: &Live) {
    let new = match resolve(args) {
        Ok(new) => new,
        Err(err) => {
            eprintln!("tracer: SIGHUP: configuration not reloaded: {err:#}");
            return;
        }
    };
    for key in needs_restart(current, &new) {
        eprintln!("tracer: SIGHUP: {key} changed: restart tracer to apply it");
    }
    replace(&live.labels, new.labels.clone());
    for (lock, endpoint) in [(&live.pyroscope, &new.pyroscope), (&live.parca, &new.parca)] {
        if let (Some(lock), Some(endpoint)) = (lock, endpoint) {
            replace(lock, endpoint.clone());
        }
    }
    eprintln!("tracer: SIGHUP: configuration reloaded");
    *current = new;
}

fn pusher(
    backend: Backend,
    endpoint: &Arc<RwLock<Endpoint>>,
    options: &DaemonOptions,
    share: u64,
    sinks: &mut Vec<Arc<SinkStats>>,
) -> Result<Pusher> {
    let stats = Arc::new(SinkStats::new(backend.name()));
    sinks.push(stats.clone());
    Pusher::start(PushSettings {
        backend,
        endpoint: endpoint.clone(),
        spool: options
            .spool_dir
            .as_ref()
            .map(|dir| (dir.join(backend.name()), share)),
        flush_within: FLUSH_WITHIN,
        stats,
    })
    .with_context(|| format!("cannot start pushing to {}", backend.name()))
}

pub async fn run(args: DaemonArgs) -> Result<()> {
    let options = resolve(&args)?;
    let stats = Arc::new(Stats::default());
    let live = Live {
        labels: Arc::new(RwLock::new(options.labels.clone())),
        pyroscope: options.pyroscope.clone().map(|e| Arc::new(RwLock::new(e))),
        parca: options.parca.clone().map(|e| Arc::new(RwLock::new(e))),
    };
    if live.pyroscope.is_none() && live.parca.is_none() && options.output.dir.is_none() {
        warn!("no --pyroscope, --parca or -o: windows are only ranked by growth in this log");
    }
    let backends = usize::from(live.pyroscope.is_some()) + usize::from(live.parca.is_some());
    let share = options.max_spool_bytes / backends.max(1) as u64;
    // The spool's own directory is checked as `-o` is (not a link, not
    // another user's), once, not only each backend's subdirectory in it.
    if let Some(dir) = &options.spool_dir
        && backends > 0
    {
        crate::outputs::OutputDir::create(dir)?;
    }
    let mut sink_stats = Vec::new();
    let mut pushers = Vec::new();
    if let Some(e) = &live.pyroscope {
        pushers.push(pusher(
            Backend::Pyroscope,
            e,
            &options,
            share,
            &mut sink_stats,
        )?);
    }
    if let Some(e) = &live.parca {
        pushers.push(pusher(Backend::Parca, e, &options, share, &mut sink_stats)?);
    }
    if let Some(addr) = options.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics {addr}: cannot listen"))?;
        info!("metrics at http://{addr}/metrics");
        tokio::spawn(metrics::serve(
            listener,
            metrics::Sources {
                stats: stats.clone(),
                sinks: sink_stats,
            },
        ));
    }
    let mut symbols = Symbols::default();
    let exporter = Exporter::start(
        ExportSettings {
            period: options.engine.sampling.map_or(1, |s| s.mean_bytes),
            window_s: options.engine.snapshot_every.as_secs_f64(),
            growth_every: options.growth_every,
            growth_windows: analysis::GrowthOptions::default().windows,
        },
        pushers,
        stats.clone(),
        symbols.subscribe(),
    )
    .context("cannot start the export thread")?;
    // SIGHUP's default is to end the process: take it over before anything.
    let mut hangups = signal(SignalKind::hangup())?;
    let labels = live.labels.clone();
    let mut current = options.clone();
    let DaemonOptions {
        engine: settings,
        output,
        ..
    } = options;
    let interval_ns = settings.snapshot_every.as_nanos() as u64;
    let engine = Engine::start(
        settings,
        Hooks {
            // SIGHUP reloads the configuration (below).
            hangup_stops: false,
            on_ready: Box::new(|| notify::notify("READY=1")),
            on_stop: Box::new(|| notify::notify("STOPPING=1")),
        },
    )?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            notify::notify("RELOADING=1");
            reload(&args, &mut current, &live);
            notify::notify("READY=1");
        }
    });
    if let Some(every) = notify::watchdog_every() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notify::notify("WATCHDOG=1");
            }
        });
    }
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(dir) = &output.dir {
        sinks.push(Box::new(CaptureSink::segments(
            dir,
            output.max_capture_bytes,
            engine.start_ns(),
            &engine.links(),
            symbols.subscribe(),
        )?));
    }
    sinks.push(Box::new(WindowSink::new(
        interval_ns,
        engine.start_ns(),
        labels,
        exporter,
        stats,
    )));
    engine.record(sinks, symbols).await
}
