//! The loaded eBPF programs and their maps: which processes are traced,
//! where uprobes are attached (docs/probes.md), and the counters of what
//! could not be recorded.

mod attach;
mod links;
mod placement;

use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use tracer_common::{PyConfig, counter, traced};

use crate::{
    counters::Counters,
    event::Pid,
    host::TaskLayout,
    proc_maps::ProcessMaps,
    sampling::{self, Sampling},
    target_file::TargetFile,
};

pub use attach::FileProbes;
use attach::{AttachedFiles, is_call_program};
pub use links::LinkKind;
use links::{BPF_TRACE_UPROBE_MULTI, BPF_TRACE_UPROBE_SESSION, Role};
pub use placement::{How, Placement};

/// The eBPF object built by build.rs from tracer-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Syscall and scheduler tracepoints, attached once at load: they fire for
/// every process and return at once for untraced ones.
const TRACEPOINTS: [(&str, &str, &str); 7] = [
    ("mmap_enter", "syscalls", "sys_enter_mmap"),
    ("mmap_exit", "syscalls", "sys_exit_mmap"),
    ("mremap_enter", "syscalls", "sys_enter_mremap"),
    ("mremap_exit", "syscalls", "sys_exit_mremap"),
    ("munmap_enter", "syscalls", "sys_enter_munmap"),
    ("process_exec", "sched", "sched_process_exec"),
    ("process_exit", "sched", "sched_process_exit"),
];

pub struct Probes {
    programs: Programs,
    files: AttachedFiles,
    sampling: Option<Sampling>,
    traced: HashMap<MapData, u32, u8>,
    python: HashMap<MapData, u32, PyConfig>,
    counters: PerCpuArray<MapData, u64>,
    /// Processes to stop at `Py_FinalizeEx` (`HOLD_AT_FINALIZE`).
    hold: HashMap<MapData, u32, u8>,
}

/// The loaded programs, which uprobes are attached through.
pub struct Programs {
    ebpf: Ebpf,
    links: LinkKind,
    /// The multi-uprobe or session links made: closing them removes every
    /// probe of the run.
    held: Vec<OwnedFd>,
}

/// A uprobe to attach: `program` at `offset`, with the `cookie` that tells
/// a program serving several functions which one this is (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    pub program: &'static str,
    pub offset: u64,
    pub cookie: u64,
    pub at: At,
}

/// Where a probe fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    Entry,
    /// At the function's return (`alloc_return`): with uprobe sessions the
    /// entry program sees its own return instead.
    Return,
}

/// Where new processes are seen: the raw tracepoint with both tasks.
const FORK_EVENT: &str = "sched_process_fork";

/// Live sampled allocations the kernel tracks (`SAMPLED`, ~64 B each,
/// preallocated): at 64 KiB sampling they stand for 16 GiB of live heap.
const SAMPLED_LIVE: u32 = 1 << 18;

/// How the programs are loaded.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The ring buffer's size: a power of two multiple of the page size.
    pub ring_bytes: u32,
    /// Where the programs read a task's thread pointer (Python frames) and
    /// whether a new task is a process sharing its parent's memory (fork
    /// following); zeros turn those off.
    pub task: TaskLayout,
    /// Report every exec on the host (`--all`).
    pub all_execs: bool,
    /// Record only allocations chosen by `--sample-bytes`.
    pub sampling: Option<Sampling>,
    /// Probe CPython's object allocator too.
    pub pymalloc: bool,
    /// How uprobes are attached.
    pub links: LinkKind,
}

impl Probes {
    /// Loads every program (the verifier runs here) and attaches the tracepoints.
    pub fn load(settings: Settings) -> Result<Self> {
        let Settings {
            ring_bytes,
            task,
            all_execs,
            sampling,
            pymalloc,
            links,
        } = settings;
        let session = u8::from(links == LinkKind::Session);
        let all_execs = u8::from(all_execs);
        let sample_bytes = sampling.map_or(0, |s| s.mean_bytes);
        let gaps = sampling::gap_table();
        // The programs' debug! calls cost nothing unless debug logging is on.
        let log_level: u8 = if log::max_level() >= log::LevelFilter::Debug {
            aya_log_common::Level::Debug as u8
        } else {
            0
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", ring_bytes)
            .map_max_entries("SAMPLED", if sample_bytes == 0 { 1 } else { SAMPLED_LIVE })
            .override_global(aya_log::LEVEL, &log_level, true)
            .override_global("FSBASE_OFFSET", &task.fsbase, true)
            .override_global("TASK_PID_OFFSET", &task.pid, true)
            .override_global("TASK_TGID_OFFSET", &task.tgid, true)
            .override_global("TASK_MM_OFFSET", &task.mm, true)
            .override_global("TASK_SIGNAL_OFFSET", &task.signal, true)
            .override_global("SIGNAL_LIVE_OFFSET", &task.signal_live, true)
            .override_global("ALL_EXECS", &all_execs, true)
            .override_global("SAMPLE_BYTES", &sample_bytes, true)
            .override_global("SESSION", &session, true)
            .load(EBPF_OBJECT)
            .context("loading the eBPF programs")?;
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        for (name, program) in ebpf.programs_mut() {
            match program {
                aya::programs::Program::UProbe(p) => match links {
                    LinkKind::Perf => p.load(),
                    LinkKind::Session if is_call_program(name) => {
                        p.load_for_link(BPF_TRACE_UPROBE_SESSION)
                    }
                    _ => p.load_for_link(BPF_TRACE_UPROBE_MULTI),
                },
                aya::programs::Program::TracePoint(p) => p.load(),
                aya::programs::Program::BtfTracePoint(p) => p.load(FORK_EVENT, &btf),
                _ => continue,
            }
            .with_context(|| format!("the kernel rejected eBPF program {name}"))?;
        }
        let fork: &mut BtfTracePoint = ebpf
            .program_mut("process_fork")
            .context("eBPF program process_fork missing")?
            .try_into()?;
        fork.attach()
            .with_context(|| format!("attaching to tracepoint {FORK_EVENT}"))?;
        for (program, category, event) in TRACEPOINTS {
            let tp: &mut TracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("eBPF program {program} missing"))?
                .try_into()?;
            tp.attach(category, event)
                .with_context(|| format!("attaching to tracepoint {category}/{event}"))?;
        }
        let mut table: Array<_, u32> =
            Array::try_from(ebpf.map_mut("GAP_TABLE").context("map GAP_TABLE missing")?)?;
        for (i, gap) in gaps.iter().enumerate() {
            table.set(i as u32, gap, 0)?;
        }
        let traced = HashMap::try_from(ebpf.take_map("TRACED").context("map TRACED missing")?)?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("map COUNTERS missing")?)?;
        let python = HashMap::try_from(ebpf.take_map("PY_PROCS").context("map PY_PROCS missing")?)?;
        let hold = HashMap::try_from(
            ebpf.take_map("HOLD_AT_FINALIZE")
                .context("map HOLD_AT_FINALIZE missing")?,
        )?;
        Ok(Self {
            programs: Programs {
                ebpf,
                links,
                held: Vec::new(),
            },
            files: AttachedFiles::new(pymalloc),
            sampling,
            traced,
            python,
            counters,
            hold,
        })
    }

    /// The ring buffer of records; taken once by the collector.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .programs
            .ebpf
            .take_map("EVENTS")
            .context("map EVENTS missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The reader of aya-log records from the programs.
    pub fn take_logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.programs.ebpf).context("initialising eBPF logging")
    }

    /// Attaches probes to every file `pid` maps that needs them and has none
    /// yet. Returns the probes of `pid`'s files that hold allocators.
    pub fn attach_process(&mut self, pid: Pid, maps: &ProcessMaps) -> Result<Vec<FileProbes>> {
        // Its C library first: until it is probed nothing the process
        // allocates is seen, and each attachment can take milliseconds.
        let mut probed = self
            .files
            .attach_process(&mut self.programs, pid, maps, |m| m.is_glibc())?;
        probed.extend(
            self.files
                .attach_process(&mut self.programs, pid, maps, |m| !m.is_glibc())?,
        );
        Ok(probed)
    }

    /// Probes the glibc `pid` maps, if it has none yet: `--all` probes the
    /// C libraries in use before it finds a CPython, so that a new process
    /// is seen from its first allocation rather than from its adoption.
    pub fn attach_libc(&mut self, pid: Pid, maps: &ProcessMaps) -> Result<()> {
        self.files
            .attach_process(&mut self.programs, pid, maps, |m| m.is_glibc())?;
        Ok(())
    }

    /// `--sample-bytes`, if the programs sample.
    pub fn sampling(&self) -> Option<Sampling> {
        self.sampling
    }

    /// Whether CPython's object allocator is probed too (`--pymalloc`).
    pub fn pymalloc(&self) -> bool {
        self.files.pymalloc()
    }

    /// Starts recording the allocations of process `pid`.
    pub fn trace_pid(&mut self, pid: u32) -> Result<()> {
        self.traced
            .insert(pid, traced::RECORD, 0)
            .with_context(|| format!("adding pid {pid} to the traced set"))
    }

    /// Records the Python frames of process `pid` with every allocation.
    pub fn trace_python(&mut self, pid: u32, config: &PyConfig) -> Result<()> {
        self.python
            .insert(pid, config, 0)
            .with_context(|| format!("configuring Python frames of pid {pid}"))
    }

    /// Stops process `pid` at `Py_FinalizeEx` (once), for its objects'
    /// types to be read (`sources::hold`).
    pub fn hold_at_finalize(&mut self, pid: u32) -> Result<()> {
        self.hold
            .insert(pid, 1, 0)
            .with_context(|| format!("holding pid {pid} at its finalization"))
    }

    /// `pid` is not to be held any more.
    pub fn unhold(&mut self, pid: u32) {
        let _ = self.hold.remove(&pid);
    }

    /// Whether `pid` is still to be held: false once the kernel stopped it.
    pub fn hold_armed(&self, pid: u32) -> bool {
        self.hold.get(&pid, 0).is_ok()
    }

    /// Stops recording process `pid` (it exited: its pid may be reused; or
    /// it is not a target after all).
    pub fn untrace_pid(&mut self, pid: u32) {
        // Any may be absent already.
        let _ = self.traced.remove(&pid);
        let _ = self.python.remove(&pid);
        let _ = self.hold.remove(&pid);
    }

    /// The kernel's counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let mut kernel = [0; counter::COUNT as usize];
        for (index, value) in kernel.iter_mut().enumerate() {
            *value = self.counters.get(&(index as u32), 0)?.iter().sum();
        }
        Ok(Counters::from_kernel(kernel))
    }
}

impl Programs {
    /// Attaches `points` to `target` for every process (the programs
    /// filter by the traced set): with links, one per program and role
    /// holding all its offsets; else one perf-event uprobe each. The kernel
    /// is given the file's descriptor (`/proc/self/fd/N`), never a path a
    /// process could change between tracer's reading the file and the
    /// kernel's.
    pub fn attach_all(&mut self, target: &TargetFile, points: &[ProbePoint]) -> Result<()> {
        let started = std::time::Instant::now();
        let path = target.kernel_path();
        let file = path.as_path();
        match self.links {
            LinkKind::Perf => {
                for p in points {
                    self.attach_perf(file, target.shown(), p)?;
                }
            }
            LinkKind::Session | LinkKind::Multi => {
                let mut groups: Vec<(&'static str, Role, Vec<u64>, Vec<u64>)> = Vec::new();
                for p in points {
                    let role = match (p.at, self.links) {
                        // The entry program, a session, sees the return.
                        (At::Return, LinkKind::Session) => continue,
                        (At::Return, _) => Role::Return,
                        (At::Entry, LinkKind::Session) if is_call_program(p.program) => {
                            Role::Session
                        }
                        (At::Entry, _) => Role::Entry,
                    };
                    let program = if p.at == At::Return {
                        RETURN_PROGRAM
                    } else {
                        p.program
                    };
                    match groups.iter_mut().find(|g| g.0 == program && g.1 == role) {
                        Some(g) => {
                            g.2.push(p.offset);
                            g.3.push(p.cookie);
                        }
                        None => groups.push((program, role, vec![p.offset], vec![p.cookie])),
                    }
                }
                for (program, role, offsets, cookies) in groups {
                    let probe: &mut UProbe = self
                        .ebpf
                        .program_mut(program)
                        .with_context(|| format!("eBPF program {program} missing"))?
                        .try_into()?;
                    let fd = probe.fd()?.as_fd();
                    let link = links::uprobe_multi(fd, file, &offsets, &cookies, role)
                        .with_context(|| {
                            format!(
                                "attaching {program} to {} ({} offsets, {role:?}): try --probe-links perf",
                                target.shown(),
                                offsets.len()
                            )
                        })?;
                    self.held.push(link);
                }
            }
        }
        log::debug!(
            "attached {} probes to {} in {:.1} ms ({:?})",
            points.len(),
            target.shown(),
            started.elapsed().as_secs_f64() * 1e3,
            self.links
        );
        Ok(())
    }

    /// One perf-event uprobe: `file` is the kernel's path to the file,
    /// `shown` its name for people.
    fn attach_perf(&mut self, file: &Path, shown: &str, p: &ProbePoint) -> Result<()> {
        let program = if p.at == At::Return {
            RETURN_PROGRAM
        } else {
            p.program
        };
        let probe: &mut UProbe = self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("eBPF program {program} missing"))?
            .try_into()?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(p.offset),
            cookie: (p.cookie != 0).then_some(p.cookie),
        };
        probe
            .attach(point, file, UProbeScope::AllProcesses)
            .with_context(|| format!("attaching {program} to {shown}+{:#x}", p.offset))?;
        Ok(())
    }
}

/// The program of every allocation function's return (without sessions).
const RETURN_PROGRAM: &str = "alloc_return";

impl Probes {
    /// How the run's uprobes are attached.
    pub fn links(&self) -> LinkKind {
        self.programs.links
    }

    /// Removes every uprobe of the run now, where its links allow it (not
    /// perf-event uprobes, removed one by one at `detach`): called as soon
    /// as recording stops, so that the targets stop trapping while the
    /// reports are made.
    pub fn remove_uprobes(&mut self) {
        if self.programs.links == LinkKind::Perf {
            return;
        }
        if self.programs.held.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        // Each link's release waits for an RCU grace period of its own:
        // released together, they wait for the same ones.
        let links = std::mem::take(&mut self.programs.held);
        let count = links.len();
        std::thread::scope(|scope| {
            for link in links {
                scope.spawn(move || drop(link));
            }
        });
        log::debug!(
            "{count} uprobe links removed in {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }

    /// Removes every probe. With links, closing them removes each link's
    /// probes at once (one RCU grace period each): done now. Perf-event
    /// uprobes wait for a grace period each, one after the other (~80 ms
    /// each here, seconds for all of them), in whichever process drops the
    /// last reference: so they are silenced now, and a child that shares
    /// the descriptors and outlives this process drops them in the
    /// background (its exit does the same if it is killed).
    pub fn detach(mut self) {
        let pids: Vec<u32> = self.traced.keys().filter_map(Result::ok).collect();
        for pid in pids {
            self.untrace_pid(pid);
        }
        if self.programs.links != LinkKind::Perf {
            self.remove_uprobes();
            drop(self);
            return;
        }
        // Taken before the fork: the parent may be gone (and the child
        // reparented) before the child first runs.
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the runtime is single-threaded (current_thread), and the
        // child only makes async-signal-safe calls before _exit.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => unsafe {
                // tracer's handlers (inherited) would swallow these.
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                // Do not hold the terminal or a reader's pipe open.
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
                while libc::getppid() == parent {
                    libc::usleep(10_000);
                }
                libc::_exit(0);
            },
            // This process's references go when it exits, before the child's.
            Ok(nix::unistd::ForkResult::Parent { .. }) => std::mem::forget(self),
            Err(err) => log::debug!("removing probes in the foreground: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    use tracer_common::func::{FUNCTIONS, Family};

    use super::{EBPF_OBJECT, RETURN_PROGRAM, TRACEPOINTS};

    /// The programs of the embedded eBPF object, and their sections
    /// (`uprobe`, `uretprobe`, `tracepoint`, ...).
    fn programs() -> Vec<(String, String)> {
        let object = object::File::parse(EBPF_OBJECT).expect("the eBPF object");
        object
            .symbols()
            .filter(|s| s.is_global() && s.kind() == object::SymbolKind::Text)
            .filter_map(|s| {
                let section = object.section_by_index(s.section_index()?).ok()?;
                Some((s.name().ok()?.to_owned(), section.name().ok()?.to_owned()))
            })
            .filter(|(_, section)| section != ".text")
            .collect()
    }

    #[test]
    fn every_allocation_function_s_program_is_in_the_object_and_back() {
        let programs = programs();
        let section_of = |program: &str| {
            programs
                .iter()
                .find(|(name, _)| name == program)
                .map(|(_, section)| section.as_str())
        };
        for f in &FUNCTIONS {
            let section = match f.family {
                Family::Syscall => "tracepoint",
                Family::Libc { .. } | Family::Pymalloc { .. } => "uprobe",
            };
            assert_eq!(section_of(f.program), Some(section), "{}", f.symbol);
        }
        // The uprobe programs that are no allocation function's: the markers
        // (attach.rs).
        let markers = ["exit_entry", "py_finalize_entry"];
        for (name, section) in &programs {
            match section.as_str() {
                "uprobe" => assert!(
                    FUNCTIONS.iter().any(|f| f.program == name) || markers.contains(&name.as_str()),
                    "{name}: a uprobe program in no row of func::FUNCTIONS"
                ),
                "uretprobe" => assert_eq!(name, RETURN_PROGRAM),
                "tracepoint" => assert!(
                    TRACEPOINTS.iter().any(|(program, ..)| program == name),
                    "{name}: a tracepoint program not attached"
                ),
                _ => {}
            }
        }
        assert!(section_of("exit_entry").is_some() && section_of("py_finalize_entry").is_some());
    }
}
