//! `tracer record`: one recording, sources -> model -> sinks. The loop
//! waits for whichever comes first and hands it to its handler: records in
//! the ring buffer, eBPF log lines, a target's exit, a drain or sample tick,
//! a rescan of processes that exec'd, or a reason to stop.

use std::{collections::HashSet, time::Duration};

use anyhow::{Result, anyhow};
use aya::maps::{MapData, RingBuf};
use log::{debug, info, warn};
use tokio::{
    sync::mpsc::UnboundedReceiver,
    time::{Instant, sleep_until},
};

use crate::{
    census::Moment,
    cli::RecordOptions,
    clock::monotonic_ns,
    counters::{self, Counters},
    event::{EventKind, ExitReason, HeapEvent, Pid},
    host,
    model::Model,
    outputs::OutputDir,
    process::{MemorySample, ProcessInfo},
    sinks::{
        Ending, Sink, Snapshot,
        capture::{CaptureFile, CaptureSink},
        reports::ReportsSink,
    },
    sources::{
        collector::{Collector, Notice},
        hold::Guard,
        identity::Identity,
        launch::Launch,
        pending::Pending,
        poll::readable,
        probes::{Probes, Settings},
        procfs,
        targets::{Decided, Targets},
        walks::Walks,
    },
    stdio,
    user::User,
};

mod plan;
mod stops;
mod walks;

pub use plan::{Plan, Sinks};
use stops::Stops;
use walks::{next_tick, recv_census};

/// How often the ring buffer is drained without a wakeup from the kernel
/// (it wakes tracer only when a quarter full: see `wakeup` in tracer-ebpf).
/// Every tick costs a wakeup of tracer: at 10 ms an idle recording used
/// 1.1% of a core on this VM, at 50 ms 0.6%. Events are at most this late;
/// nothing waits on them sooner (exits and samples drain first).
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// `tracer record`: a recording into a capture and the end-of-run reports.
pub async fn record(options: RecordOptions) -> Result<()> {
    // Checked before anything is loaded: a bad -o fails at once.
    let output = options
        .output
        .as_deref()
        .map(OutputDir::create)
        .transpose()?;
    let probes = options.links.to_string();
    let (analysis, top) = (options.analysis, options.top);
    let plan = Plan::into_sinks(Box::new(move |start_ns| {
        let (capture, file) = CaptureSink::create(output.as_ref(), start_ns, &probes)?;
        let reports = ReportsSink::new(file.clone(), output, analysis, top);
        Ok(Sinks {
            sinks: vec![Box::new(capture), Box::new(reports)],
            capture: Some(file),
        })
    }));
    trace(&options, plan).await
}

/// One recording into the sinks `plan` makes, until a signal, the
/// duration, the end of every target, the capture's size limit, or a sink
/// asks to stop.
pub async fn trace(options: &RecordOptions, plan: Plan) -> Result<()> {
    host::check()?;
    // Taken first: one that comes while the programs load or processes
    // are adopted stops the recording as soon as it starts, with reports.
    let mut stops = Stops::new(plan.hangup_stops)?;
    // Checked before anything is loaded: a bad --user fails at once.
    let launch = if options.command.is_empty() {
        None
    } else {
        Some(Launch {
            user: User::resolve(options.user.as_deref())?,
            detach: options.detach_command,
        })
    };
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
        links: options.links,
    })?;
    info!("probes: {}", options.links);
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
        capture: None,
        walks: options.types.then(Walks::new),
        walking: HashSet::new(),
        guard: None,
        armed: Vec::new(),
    };
    for &pid in &options.pids {
        rec.targets.add_pid(pid, &mut rec.probes, &mut rec.model)?;
    }
    if options.all {
        rec.targets.adopt_running(&mut rec.probes, &mut rec.model);
    }
    let start_ns = monotonic_ns();
    let made = (plan.sinks)(start_ns)?;
    rec.sinks = made.sinks;
    rec.capture = made.capture;
    (plan.on_ready)();
    // The baseline of the types' growth.
    rec.walk_running(Moment::Start);
    let stop = rec.run(options, launch.as_ref(), exits, &mut stops).await;
    if let Ok(stop) = &stop {
        debug!("recording stopped: {stop}");
    }
    (plan.on_stop)();
    // Whatever ended it, no process stays held.
    let finished = rec.finish(options.types_every.is_some());
    stop.and(finished)
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
    /// The capture being written, to watch its size.
    capture: Option<CaptureFile>,
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

impl Recording {
    /// Records until a signal, the deadline, the capture's size limit, a
    /// sink's request, or the end of every target. Returns why it stopped.
    async fn run(
        &mut self,
        options: &RecordOptions,
        launch: Option<&Launch>,
        mut exits: UnboundedReceiver<Identity>,
        stops: &mut Stops,
    ) -> Result<&'static str> {
        let mut ring = readable(self.probes.take_events()?)?;
        let mut logger = readable(self.probes.take_logger()?)?;
        let started = Instant::now();
        if let Some(how) = launch {
            if self.walks.is_some() {
                self.guard = Some(Guard::start()?);
            }
            let (guard, armed) = (&mut self.guard, &mut self.armed);
            self.targets.launch(
                &options.command,
                how,
                &mut self.probes,
                &mut self.model,
                |pid, probes| {
                    if let Some(guard) = guard {
                        guard.watch(pid)?;
                        probes.hold_at_finalize(pid)?;
                        armed.push(pid);
                    }
                    Ok(())
                },
            )?;
        }
        for info in self.targets.watch_exits(&self.model) {
            self.ended(&info)?;
        }
        stdio::line(&format!(
            "tracer: {}; Ctrl-C to stop",
            self.targets.describe()
        ));
        let deadline = options.duration.map(|d| started + d);
        let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sample_tick = tokio::time::interval(options.sample_every);
        // A late tick is one sample late, not a burst of samples of one moment.
        sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first periodic walk comes one period after the start's.
        let walk_every = options.types_every.filter(|_| self.walks.is_some());
        let mut walk_tick = walk_every.map(|every| {
            let mut tick = tokio::time::interval_at(started + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        let stop = loop {
            if self.targets.all_exited() {
                break "every target exited";
            }
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
                why = stops.next() => break why,
                _ = sleep_until(deadline.unwrap_or(started)), if deadline.is_some() => {
                    break "duration reached";
                }
                Some(process) = exits.recv() => {
                    // Its last records first, then its end.
                    self.drain(ring.get_mut())?;
                    self.exited(process.pid, Some(process))?;
                }
                _ = sleep_until(self.targets.next_rescan().unwrap_or(started)),
                    if self.targets.next_rescan().is_some() =>
                {
                    let decided = self.targets.rescan(&mut self.probes, &mut self.model);
                    self.decided(decided)?;
                }
                _ = drain_tick.tick() => {
                    self.drain(ring.get_mut())?;
                    if self.sinks.iter().any(|s| s.stop_requested()) {
                        break "quit";
                    }
                }
                _ = next_tick(&mut walk_tick) => self.walk_running(Moment::Periodic),
                _ = sample_tick.tick() => {
                    // Take the newest events first: a sample is of the heap now.
                    self.drain(ring.get_mut())?;
                    self.held_without_marker();
                    self.snapshot()?;
                    if self.capture_full(options.max_capture_bytes)? {
                        break "the capture reached --max-capture-mb";
                    }
                }
            }
        };
        self.drain(ring.get_mut())?;
        logger.get_mut().flush();
        Ok(stop)
    }

    /// Whether the capture has reached `max` bytes: then the recording
    /// stops (docs/captures.md), and says so.
    fn capture_full(&self, max: u64) -> Result<bool> {
        let Some(capture) = &self.capture else {
            return Ok(false);
        };
        let size = capture.file.metadata()?.len();
        if size < max {
            return Ok(false);
        }
        stdio::line(&format!(
            "tracer: {} reached {} MiB (--max-capture-mb): recording stopped; the reports cover what was recorded",
            capture.shown,
            max >> 20
        ));
        Ok(true)
    }

    /// Applies every record in the ring to the model and hands the
    /// targets' events to the sinks (holding the others), in order with
    /// what the records say of the processes: a process's exit comes after
    /// its last events.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        let mut execs = Vec::new();
        let mut ended = Vec::new();
        while let Some(item) = ring.next() {
            let notice = self.collector.apply(&item, &mut self.model);
            drop(item);
            match notice {
                // A forked child is a target before its first event is
                // admitted: its fork must reach the sinks in order with its
                // parent's events.
                Some(Notice::Fork(fork)) => {
                    // A target still known under the child's pid ended
                    // unseen (its exit record was lost with others).
                    ended.extend(self.targets.forked(&fork, &self.model));
                }
                Some(Notice::Exited(pid)) => {
                    self.flush()?;
                    self.exited(pid, None)?;
                }
                Some(Notice::Exec {
                    pid,
                    traced_by_name,
                }) => execs.push((pid, traced_by_name)),
                Some(Notice::Exiting(_)) | None => {}
            }
        }
        self.flush()?;
        for info in ended {
            self.ended(&info)?;
        }
        for &(pid, traced_by_name) in &execs {
            self.targets.exec_seen(pid, traced_by_name);
        }
        // A process that just exec'd is looked at once now, not a tick later.
        if !execs.is_empty() {
            let decided = self.targets.rescan(&mut self.probes, &mut self.model);
            self.decided(decided)?;
        }
        Ok(())
    }

    /// The events applied so far go on: the targets' to the sinks, the
    /// others' to be held.
    fn flush(&mut self) -> Result<()> {
        let events = self.collector.take_events();
        let targets = &self.targets;
        let ready = self.pending.admit(events, |pid| targets.contains(pid));
        self.feed(&ready)
    }

    fn feed(&mut self, events: &[HeapEvent]) -> Result<()> {
        if !events.is_empty() {
            for sink in &mut self.sinks {
                sink.events(events)?;
            }
        }
        for e in events {
            if e.kind
                == (EventKind::Exiting {
                    reason: ExitReason::PyFinalize,
                })
            {
                self.finalizing(e.pid);
            }
        }
        Ok(())
    }

    /// `pid` exited: `process` from its pidfd, or `None` from the kernel's
    /// exit record (after its last records, and the pid traced no more).
    /// A target is ended; nothing of a process that was not one is kept.
    fn exited(&mut self, pid: Pid, process: Option<Identity>) -> Result<()> {
        match self.targets.exited(pid, process, &self.model) {
            Some(info) => self.ended(&info),
            None if process.is_none() => {
                self.pending.drop_pid(pid);
                self.model.forget(pid);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A target ended: the sinks are told, then it is forgotten.
    fn ended(&mut self, info: &ProcessInfo) -> Result<()> {
        for sink in &mut self.sinks {
            sink.exited(info)?;
        }
        self.pending.drop_pid(info.pid);
        self.model.forget(info.pid);
        Ok(())
    }

    /// Adopted processes' held events go on to the sinks, after any target
    /// found to have ended under their pid; those of processes let go are
    /// dropped.
    fn decided(&mut self, decided: Decided) -> Result<()> {
        for info in &decided.ended {
            self.ended(info)?;
        }
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
        counters.set(
            counters::STACKS_OVER_LIMIT,
            self.model.stacks().over_limit(),
        );
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
        Ok(())
    }

    /// The uprobes removed, a launched command still running stopped, the
    /// last walks made, a last snapshot taken, then every sink finished in
    /// order; what remains of the probes is removed last (in the background
    /// for perf-event uprobes).
    fn finish(mut self, periodic_walks: bool) -> Result<()> {
        // A launched command to be held at its finalization needs its probe
        // until then.
        if self.armed.is_empty() {
            self.probes.remove_uprobes();
        }
        for pid in self.targets.finish(&mut self.model) {
            self.pending.drop_pid(pid);
        }
        self.last_walks(periodic_walks)?;
        self.probes.remove_uprobes();
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
        self.probes.detach();
        first_error.map_or(Ok(()), |err| Err(anyhow!(err)))
    }
}
