//! The engine: one recording, sources -> model -> sinks, whichever command
//! runs it (`record`, `top`, `daemon` give it `Settings` and their sinks).
//! `Engine::start` loads the programs and adopts the named targets;
//! `Engine::record` runs the loop, which waits for whichever comes first
//! and hands it to its handler: records in the ring buffer (applied to the
//! model by the collector, their notices acted on by the process
//! `Lifecycle`), eBPF log lines, a target's exit, a drain or snapshot
//! tick, a rescan of processes that exec'd, or a reason to stop.

pub mod settings;
mod stops;
mod walks;

use std::{collections::HashSet, ffi::OsString, time::Duration};

use anyhow::{Result, anyhow};
use aya::maps::{MapData, RingBuf};
use log::{debug, info, warn};
use tokio::{
    io::unix::AsyncFd,
    time::{Instant, sleep_until},
};

use self::{
    settings::{Bounds, Settings, WalkSettings},
    stops::Stops,
    walks::{next_tick, recv_census},
};
use crate::{
    census::Moment,
    clock::monotonic_ns,
    counters::{self, Counters},
    event::{EventKind, ExitReason, HeapEvent, Pid},
    host,
    model::Model,
    process::MemorySample,
    sinks::{Ending, Sink, Snapshot},
    sources::{
        collector::Collector,
        hold::Guard,
        lifecycle::{Exits, Lifecycle, Step, launch::Launch},
        poll::readable,
        probes::{self, Probes},
        procfs,
        walks::Walks,
    },
    stdio,
    symbolize::feed::Symbols,
    user::User,
};

/// How often the ring buffer is drained without a wakeup from the kernel
/// (it wakes tracer only when a quarter full: see `wakeup` in tracer-ebpf).
/// Every tick costs a wakeup of tracer: at 10 ms an idle recording used
/// 1.1% of a core on this VM, at 50 ms 0.6%. Events are at most this late;
/// nothing waits on them sooner (exits and samples drain first).
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// What a command asks of the recording besides its settings.
pub struct Hooks {
    /// Whether SIGHUP stops the recording (the daemon reloads on it).
    pub hangup_stops: bool,
    /// Called once the probes are in place (the daemon tells systemd).
    pub on_ready: Box<dyn FnOnce()>,
    /// Called when recording stops, before the sinks finish.
    pub on_stop: Box<dyn FnOnce()>,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            hangup_stops: true,
            on_ready: Box::new(|| {}),
            on_stop: Box::new(|| {}),
        }
    }
}

/// A command to start, and how.
struct Launching {
    command: Vec<OsString>,
    how: Launch,
}

/// One recording: the probes and processes (`Lifecycle`), the collector,
/// the model, the sinks.
pub struct Engine {
    stops: Stops,
    hooks: Option<Hooks>,
    launch: Option<Launching>,
    snapshot_every: Duration,
    bounds: Bounds,
    walk_settings: WalkSettings,
    lifecycle: Lifecycle,
    exits: Exits,
    /// Taken by the loop, which waits on them.
    ring: Option<AsyncFd<RingBuf<MapData>>>,
    logger: Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    collector: Collector,
    model: Model,
    start_ns: u64,
    sinks: Vec<Box<dyn Sink>>,
    symbols: Symbols,
    /// Heap walks (types of live objects), unless `--no-types`.
    walks: Option<Walks>,
    /// Processes with a walk queued or running: a periodic walk of one
    /// waits for its previous walk to end.
    walking: HashSet<Pid>,
    /// Continues held processes if tracer dies.
    guard: Option<Guard>,
    /// Launched commands to be held at their finalization, not yet held.
    armed: Vec<Pid>,
}

impl Engine {
    /// Loads the programs (the verifier runs here) and traces the named
    /// processes (with `--all`, every CPython process running now). Taken
    /// first: a signal that comes while this runs stops the recording as
    /// soon as it starts, with its reports.
    pub fn start(settings: Settings, hooks: Hooks) -> Result<Self> {
        host::check()?;
        let stops = Stops::new(hooks.hangup_stops)?;
        let Settings {
            targets,
            probes: probe_settings,
            sampling,
            bounds,
            snapshot_every,
            walks: walk_settings,
        } = settings;
        // Checked before anything is loaded: a bad --user fails at once.
        let launch = match targets.launch {
            Some(l) => Some(Launching {
                command: l.command,
                how: Launch {
                    user: User::resolve(l.user.as_deref())?,
                    detach: l.detach,
                },
            }),
            None => None,
        };
        let task = host::task_layout().unwrap_or_else(|err| {
            warn!("no Python frames and no fork following: {err:#}");
            host::TaskLayout::default()
        });
        let mut probes = Probes::load(probes::Settings {
            ring_bytes: probe_settings.ring_bytes,
            task,
            all_execs: targets.all,
            sampling,
            pymalloc: probe_settings.pymalloc,
            links: probe_settings.links,
        })?;
        info!("probes: {}", probe_settings.links);
        let ring = readable(probes.take_events()?)?;
        let logger = readable(probes.take_logger()?)?;
        let (mut lifecycle, exits) = Lifecycle::new(probes, targets.all, targets.matching);
        let mut model = Model::default();
        model.cap_heap(bounds.max_tracked);
        for &pid in &targets.pids {
            lifecycle.add_pid(pid, &mut model)?;
        }
        if targets.all {
            lifecycle.adopt_running(&mut model);
        }
        Ok(Self {
            stops,
            hooks: Some(hooks),
            launch,
            snapshot_every,
            bounds,
            walk_settings,
            lifecycle,
            exits,
            ring: Some(ring),
            logger: Some(logger),
            collector: Collector::new(sampling),
            model,
            start_ns: monotonic_ns(),
            sinks: Vec::new(),
            symbols: Symbols::default(),
            walks: walk_settings.types.then(Walks::new),
            walking: HashSet::new(),
            guard: None,
            armed: Vec::new(),
        })
    }

    /// When recording began (CLOCK_MONOTONIC ns).
    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }

    /// How the uprobes are attached, as reports say it.
    pub fn links(&self) -> String {
        self.lifecycle.links()
    }

    /// Records into `sinks`, whose stacks `symbols` defines, until a
    /// signal, the duration, the end of every target, or a sink asks to
    /// stop; then every sink is finished.
    pub async fn record(mut self, sinks: Vec<Box<dyn Sink>>, symbols: Symbols) -> Result<()> {
        self.sinks = sinks;
        self.symbols = symbols;
        let hooks = self.hooks.take().unwrap_or_default();
        (hooks.on_ready)();
        // The baseline of the types' growth.
        self.walk_running(Moment::Start);
        let stop = self.run().await;
        if let Ok(stop) = &stop {
            debug!("recording stopped: {stop}");
        }
        (hooks.on_stop)();
        // Whatever ended it, no process stays held.
        let finished = self.finish();
        stop.and(finished)
    }

    /// Records until a signal, the deadline, a sink's request, or the end
    /// of every target. Returns why it stopped.
    async fn run(&mut self) -> Result<&'static str> {
        let (Some(mut ring), Some(mut logger)) = (self.ring.take(), self.logger.take()) else {
            return Err(anyhow!("the recording ran twice"));
        };
        let started = Instant::now();
        if let Some(launch) = self.launch.take() {
            self.launch(&launch)?;
        }
        let steps = self.lifecycle.watch_exits(&self.model);
        self.apply(steps)?;
        stdio::line(&format!(
            "tracer: {}; Ctrl-C to stop",
            self.lifecycle.describe()
        ));
        let deadline = self.bounds.duration.map(|d| started + d);
        let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sample_tick = tokio::time::interval(self.snapshot_every);
        // A late tick is one sample late, not a burst of samples of one moment.
        sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first periodic walk comes one period after the start's.
        let walk_every = self.walk_settings.every.filter(|_| self.walks.is_some());
        let mut walk_tick = walk_every.map(|every| {
            let mut tick = tokio::time::interval_at(started + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        let stop = loop {
            if self.lifecycle.all_exited() {
                break "every target exited";
            }
            let next_rescan = self.lifecycle.next_rescan();
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    self.drain(guard.get_inner_mut())?;
                    guard.clear_ready();
                }
                guard = logger.readable_mut() => {
                    let mut guard = guard?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Some(census) = recv_census(&mut self.walks) => self.censused(&census)?,
                why = self.stops.next() => break why,
                _ = sleep_until(deadline.unwrap_or(started)), if deadline.is_some() => {
                    break "duration reached";
                }
                Some(process) = self.exits.recv() => {
                    // Its last records first, then its end.
                    self.drain(ring.get_mut())?;
                    let steps = self.lifecycle.exited(process, &self.model);
                    self.apply(steps)?;
                }
                _ = sleep_until(next_rescan.unwrap_or(started)), if next_rescan.is_some() => {
                    let steps = self.lifecycle.rescan(&mut self.model);
                    self.apply(steps)?;
                }
                _ = drain_tick.tick() => {
                    self.drain(ring.get_mut())?;
                    if let Some(why) = self.stop_requested() {
                        break why;
                    }
                }
                _ = next_tick(&mut walk_tick) => self.walk_running(Moment::Periodic),
                _ = sample_tick.tick() => {
                    // Take the newest events first: a sample is of the heap now.
                    self.drain(ring.get_mut())?;
                    self.held_without_marker();
                    self.snapshot()?;
                    if let Some(why) = self.stop_requested() {
                        break why;
                    }
                }
            }
        };
        self.drain(ring.get_mut())?;
        logger.get_mut().flush();
        Ok(stop)
    }

    /// Starts the command, held until its probes are in place; with heap
    /// walks, to be held at its finalization too.
    fn launch(&mut self, launch: &Launching) -> Result<()> {
        let hold = self.walks.is_some();
        if hold {
            self.guard = Some(Guard::start()?);
        }
        let guard = &mut self.guard;
        let pid =
            self.lifecycle
                .launch(
                    &launch.command,
                    &launch.how,
                    &mut self.model,
                    hold,
                    |pid| match guard {
                        Some(guard) => guard.watch(pid),
                        None => Ok(()),
                    },
                )?;
        if hold {
            self.armed.push(pid);
        }
        Ok(())
    }

    /// Why a sink asks the recording to stop, if one does.
    fn stop_requested(&self) -> Option<&'static str> {
        self.sinks.iter().find_map(|s| s.stop_requested())
    }

    /// Applies every record in the ring to the model, and what the
    /// lifecycle makes of each notice, in order with the records: a
    /// process's exit comes after its last events.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        while let Some(item) = ring.next() {
            let notice = self.collector.apply(&item, &mut self.model);
            drop(item);
            if let Some(notice) = notice {
                let steps = self
                    .lifecycle
                    .notice(notice, &self.model, &mut self.collector);
                self.apply(steps)?;
            }
        }
        let steps = self.lifecycle.drained(&mut self.model, &mut self.collector);
        self.apply(steps)
    }

    /// Applies what the lifecycle decided, in order.
    fn apply(&mut self, steps: Vec<Step>) -> Result<()> {
        for step in steps {
            match step {
                Step::Events(events) => self.feed(&events)?,
                Step::Ended(info) => {
                    for sink in &mut self.sinks {
                        sink.exited(&info)?;
                    }
                    self.model.forget(info.pid);
                }
                Step::Forget(pid) => self.model.forget(pid),
            }
        }
        Ok(())
    }

    /// Events of targets to the sinks; a launched command that entered
    /// `Py_FinalizeEx` is walked while it is held there.
    fn feed(&mut self, events: &[HeapEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        for sink in &mut self.sinks {
            sink.events(events)?;
        }
        let finalizing = EventKind::Exiting {
            reason: ExitReason::PyFinalize,
        };
        for e in events.iter().filter(|e| e.kind == finalizing) {
            self.finalizing(e.pid);
        }
        Ok(())
    }

    fn counters(&self) -> Result<Counters> {
        let mut counters = self.lifecycle.counters()?;
        counters.set(counters::MALFORMED_RECORDS, self.collector.malformed());
        counters.set(
            counters::STACKS_OVER_LIMIT,
            self.model.stacks().over_limit(),
        );
        Ok(counters)
    }

    /// Hands every sink the model and the targets as they are now, once
    /// the stacks interned since the last snapshot are offered to the
    /// symbolizer.
    fn snapshot(&mut self) -> Result<()> {
        self.symbols.offer(&self.model);
        let ts_ns = monotonic_ns();
        let samples: Vec<MemorySample> = self
            .lifecycle
            .running()
            .map(|pid| MemorySample {
                pid,
                ts_ns,
                live_bytes: self
                    .model
                    .heap()
                    .process(pid)
                    .map_or(0, |p| p.totals().live_bytes),
                rss_bytes: procfs::rss_bytes(pid),
            })
            .collect();
        let snapshot = Snapshot {
            ts_ns,
            model: &self.model,
            processes: &self.lifecycle.infos(&self.model),
            samples: &samples,
            counters: self.counters()?,
        };
        for sink in &mut self.sinks {
            sink.snapshot(&snapshot)?;
        }
        Ok(())
    }

    /// The uprobes removed, a launched command still running stopped, the
    /// last walks made, a last snapshot taken, then every sink finished in
    /// order; what remains of the probes is removed last (in the background
    /// for perf-event uprobes).
    fn finish(mut self) -> Result<()> {
        // A launched command to be held at its finalization needs its probe
        // until then.
        if self.armed.is_empty() {
            self.lifecycle.remove_uprobes();
        }
        let steps = self.lifecycle.finish();
        self.apply(steps)?;
        self.last_walks(self.walk_settings.every.is_some())?;
        self.lifecycle.remove_uprobes();
        self.snapshot()?;
        let ending = Ending {
            end_ns: monotonic_ns(),
            processes: self.lifecycle.infos(&self.model),
        };
        let mut first_error = None;
        for sink in self.sinks.drain(..) {
            if let Err(err) = sink.finish(&ending)
                && first_error.is_none()
            {
                first_error = Some(err);
            }
        }
        let symbolized = std::mem::take(&mut self.symbols).finish();
        info!("symbolized {symbolized} stacks, each once for every sink");
        self.lifecycle.detach_all();
        first_error.map_or(Ok(()), |err| Err(anyhow!(err)))
    }
}
