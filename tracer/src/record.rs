//! `tracer record`: one recording, sources -> model -> sinks. The loop
//! waits for whichever comes first and hands it to its handler: records in
//! the ring buffer, eBPF log lines, a target's exit, a drain or sample tick,
//! a rescan of processes that exec'd, or a reason to stop.

use std::time::Duration;

use anyhow::{Result, anyhow};
use aya::maps::{MapData, RingBuf};
use log::{debug, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep_until},
};

use crate::{
    cli::RecordOptions,
    clock::monotonic_ns,
    counters::{self, Counters},
    event::Pid,
    host,
    model::Model,
    process::MemorySample,
    sinks::{Ending, Sink, Snapshot, capture::CaptureSink, reports::ReportsSink},
    sources::{
        collector::{Collector, Notice},
        pending::Pending,
        probes::{Probes, Settings},
        procfs,
        targets::{Decided, Targets, readable},
    },
};

/// How often the ring buffer is drained without a wakeup from the kernel
/// (it wakes tracer only when a quarter full: see `wakeup` in tracer-ebpf).
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// What a recording does besides `tracer record`'s: the daemon's sinks and
/// bounds.
pub struct Plan {
    /// Makes the sinks, given when recording began (CLOCK_MONOTONIC ns).
    pub sinks: SinksOf,
    /// `--match`: only the CPython processes whose command line matches.
    pub matching: Option<regex::Regex>,
    /// Forget exited processes once a snapshot has shown them exited.
    pub forget_exited: bool,
    /// `--max-tracked`.
    pub heap_cap: Option<u64>,
    /// Called once the probes are in place (the daemon tells systemd).
    pub on_ready: Box<dyn FnOnce()>,
    /// Called when recording stops, before the sinks finish.
    pub on_stop: Box<dyn FnOnce()>,
}

pub type SinksOf = Box<dyn FnOnce(u64) -> Result<Vec<Box<dyn Sink>>>>;

pub async fn record(options: RecordOptions) -> Result<()> {
    let output = options.output.clone();
    let (analysis, top) = (options.analysis, options.top);
    let plan = Plan {
        sinks: Box::new(move |start_ns| {
            let (capture, file) = CaptureSink::create(output.as_deref(), start_ns)?;
            Ok(vec![
                Box::new(capture) as Box<dyn Sink>,
                Box::new(ReportsSink::new(file, output, analysis, top)),
            ])
        }),
        matching: None,
        forget_exited: false,
        heap_cap: None,
        on_ready: Box::new(|| {}),
        on_stop: Box::new(|| {}),
    };
    record_with(options, plan).await
}

/// One recording into the sinks `plan` makes.
pub async fn record_with(options: RecordOptions, plan: Plan) -> Result<()> {
    host::check()?;
    let task = host::task_layout().unwrap_or_else(|err| {
        warn!("no Python frames and no fork following: {err:#}");
        host::TaskLayout::default()
    });
    let probes = Probes::load(Settings {
        ring_bytes: options.ring_bytes,
        task,
        all_execs: options.all,
        sampling: options.sampling,
        pymalloc: options.pymalloc,
    })?;
    let (mut targets, exits) = Targets::new(options.all);
    if let Some(re) = plan.matching {
        targets.only_matching(re);
    }
    let mut model = Model::default();
    model.cap_heap(plan.heap_cap);
    let mut rec = Recording {
        probes,
        collector: Collector::new(options.sampling),
        model,
        targets,
        pending: Pending::default(),
        sinks: Vec::new(),
        forget_exited: plan.forget_exited,
    };
    for &pid in &options.pids {
        rec.targets.add_pid(pid, &mut rec.probes, &mut rec.model)?;
    }
    if options.all {
        rec.targets.adopt_running(&mut rec.probes, &mut rec.model);
    }
    let start_ns = monotonic_ns();
    rec.sinks = (plan.sinks)(start_ns)?;
    (plan.on_ready)();
    let stop = rec.run(&options, exits).await?;
    debug!("recording stopped: {stop}");
    (plan.on_stop)();
    rec.finish()
}

/// The probes, the model and the sinks of one recording.
struct Recording {
    probes: Probes,
    collector: Collector,
    model: Model,
    targets: Targets,
    /// Events of processes traced but not adopted yet.
    pending: Pending,
    sinks: Vec<Box<dyn Sink>>,
    /// Exited processes are forgotten after the snapshot that shows them.
    forget_exited: bool,
}

impl Recording {
    /// Records until a signal, the deadline, or the end of every target.
    /// Returns why it stopped.
    async fn run(
        &mut self,
        options: &RecordOptions,
        mut exits: tokio::sync::mpsc::UnboundedReceiver<Pid>,
    ) -> Result<&'static str> {
        let mut ring = readable(self.probes.take_events()?)?;
        let mut logger = readable(self.probes.take_logger()?)?;
        let started = Instant::now();
        if !options.command.is_empty() {
            self.targets
                .launch(&options.command, &mut self.probes, &mut self.model)?;
        }
        self.targets.watch_exits()?;
        eprintln!("tracer: {}; Ctrl-C to stop", self.targets.describe());
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let deadline = options.duration.map(|d| started + d);
        let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sample_tick = tokio::time::interval(options.sample_every);
        // A late tick is one sample late, not a burst of samples of one moment.
        sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = loop {
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
                _ = sigint.recv() => break "interrupted",
                _ = sigterm.recv() => break "terminated",
                _ = sleep_until(deadline.unwrap_or(started)), if deadline.is_some() => {
                    break "duration reached";
                }
                Some(pid) = exits.recv() => {
                    if self.targets.exited(pid, &mut self.probes) {
                        break "every target exited";
                    }
                }
                _ = sleep_until(self.targets.next_rescan().unwrap_or(started)),
                    if self.targets.next_rescan().is_some() =>
                {
                    let decided = self.targets.rescan(&mut self.probes, &mut self.model);
                    self.decided(decided)?;
                }
                _ = drain_tick.tick() => self.drain(ring.get_mut())?,
                _ = sample_tick.tick() => {
                    // Take the newest events first: a sample is of the heap now.
                    self.drain(ring.get_mut())?;
                    self.snapshot()?;
                }
            }
        };
        self.drain(ring.get_mut())?;
        logger.get_mut().flush();
        Ok(stop)
    }

    /// Applies every record in the ring to the model, hands the targets'
    /// events to the sinks (holding the others), and acts on what the
    /// records say of the processes.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        let mut notices = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(n) = self.collector.apply(&item, &mut self.model) {
                notices.push(n);
            }
        }
        // A forked child is a target before its first event is admitted:
        // its fork must reach the sinks in order with its parent's events.
        for notice in &notices {
            if let Notice::Fork {
                child,
                parent,
                shares_memory,
            } = *notice
            {
                self.targets.forked(child, parent, shares_memory);
            }
        }
        let events = self.collector.take_events();
        let targets = &self.targets;
        let ready = self.pending.admit(events, |pid| targets.contains(pid));
        self.feed(&ready)?;
        let mut execs = false;
        for notice in notices {
            if let Notice::Exec {
                pid,
                traced_by_name,
            } = notice
            {
                self.targets.exec_seen(pid, traced_by_name);
                execs = true;
            }
        }
        // A process that just exec'd is looked at once now, not a tick later.
        if execs {
            let decided = self.targets.rescan(&mut self.probes, &mut self.model);
            self.decided(decided)?;
        }
        Ok(())
    }

    fn feed(&mut self, events: &[crate::event::HeapEvent]) -> Result<()> {
        if !events.is_empty() {
            for sink in &mut self.sinks {
                sink.events(events)?;
            }
        }
        Ok(())
    }

    /// Adopted processes' held events go on to the sinks; those of
    /// processes let go are dropped.
    fn decided(&mut self, decided: Decided) -> Result<()> {
        for pid in decided.adopted {
            let released = self.pending.release(pid);
            if released.lost > 0 {
                self.targets.note(
                    pid,
                    format!(
                        "{} events before it was adopted could not be held (see docs/allocation-matching.md)",
                        released.lost
                    ),
                );
            }
            self.feed(&released.events)?;
        }
        for pid in decided.dropped {
            self.pending.drop_pid(pid);
        }
        Ok(())
    }

    fn counters(&self) -> Result<Counters> {
        let mut counters = self.probes.counters()?;
        counters.set(counters::MALFORMED_RECORDS, self.collector.malformed());
        Ok(counters)
    }

    /// Hands every sink the model and the targets as they are now.
    fn snapshot(&mut self) -> Result<()> {
        let ts_ns = monotonic_ns();
        let samples: Vec<MemorySample> = self
            .targets
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
            processes: &self.targets.infos(&self.model),
            samples: &samples,
            counters: self.counters()?,
        };
        for sink in &mut self.sinks {
            sink.snapshot(&snapshot)?;
        }
        if self.forget_exited {
            let gone = self.targets.forget_exited();
            for pid in &gone {
                self.pending.drop_pid(*pid);
            }
            self.model.forget_exited(&gone);
        }
        Ok(())
    }

    /// A last snapshot, then every sink finished in order; the probes are
    /// removed in the background.
    fn finish(mut self) -> Result<()> {
        for pid in self.targets.finish(&mut self.model) {
            self.pending.drop_pid(pid);
        }
        self.snapshot()?;
        let ending = Ending {
            end_ns: monotonic_ns(),
            processes: self.targets.infos(&self.model),
        };
        let mut first_error = None;
        for sink in self.sinks.drain(..) {
            if let Err(err) = sink.finish(&ending)
                && first_error.is_none()
            {
                first_error = Some(err);
            }
        }
        self.probes.detach_in_background();
        first_error.map_or(Ok(()), |err| Err(anyhow!(err)))
    }
}
