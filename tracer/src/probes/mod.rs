//! The loaded eBPF programs and their maps: which processes are traced,
//! where uprobes are attached, and the counters of what could not be recorded.

mod attach;
mod placement;

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use tracer_common::{PyConfig, counter};

use crate::sampling::{self, Sampling};

pub use attach::{AttachedFiles, FileProbes};
pub use placement::{How, Placement};

/// The eBPF object built by build.rs from tracer-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Syscall and scheduler tracepoints, attached once at load: they fire for
/// every process and return at once for untraced ones.
const TRACEPOINTS: [(&str, &str, &str); 6] = [
    ("mmap_enter", "syscalls", "sys_enter_mmap"),
    ("mmap_exit", "syscalls", "sys_exit_mmap"),
    ("mremap_enter", "syscalls", "sys_enter_mremap"),
    ("mremap_exit", "syscalls", "sys_exit_mremap"),
    ("munmap_enter", "syscalls", "sys_enter_munmap"),
    ("process_exec", "sched", "sched_process_exec"),
];

pub struct Probes {
    ebpf: Ebpf,
    traced: HashMap<MapData, u32, u8>,
    python: HashMap<MapData, u32, PyConfig>,
    counters: PerCpuArray<MapData, u64>,
}

/// What the kernel side could not record, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    pub events: u64,
    pub lost_events: u64,
    pub lost_stacks: u64,
    pub in_flight_full: u64,
    pub nested_calls: u64,
    pub stale_in_flight: u64,
    pub unmatched_returns: u64,
    pub lost_code: u64,
    pub unsampled: u64,
}

/// Live sampled allocations the kernel tracks (`SAMPLED`, ~64 B each,
/// preallocated): at 64 KiB sampling they stand for 16 GiB of live heap.
const SAMPLED_LIVE: u32 = 1 << 18;

impl Probes {
    /// Loads every program (the verifier runs here) and attaches the tracepoints.
    /// `ring_bytes` must be a power of two multiple of the page size.
    /// `fsbase_offset` (see `host::fsbase_offset`) lets the programs read
    /// Python frames; 0 turns them off. `all_execs` reports every exec on
    /// the host (`--all`). `sampling`: record only allocations chosen by
    /// `--sample-bytes`.
    pub fn load(
        ring_bytes: u32,
        fsbase_offset: u64,
        all_execs: bool,
        sampling: Option<Sampling>,
    ) -> Result<Self> {
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
            .override_global("FSBASE_OFFSET", &fsbase_offset, true)
            .override_global("ALL_EXECS", &all_execs, true)
            .override_global("SAMPLE_BYTES", &sample_bytes, true)
            .load(EBPF_OBJECT)
            .context("loading the eBPF programs")?;
        for (name, program) in ebpf.programs_mut() {
            match program {
                aya::programs::Program::UProbe(p) => p.load(),
                aya::programs::Program::TracePoint(p) => p.load(),
                _ => continue,
            }
            .with_context(|| format!("the kernel rejected eBPF program {name}"))?;
        }
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
        Ok(Self {
            ebpf,
            traced,
            python,
            counters,
        })
    }

    /// The ring buffer of records; taken once by the collector.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EVENTS").context("map EVENTS missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The reader of aya-log records from the programs.
    pub fn take_logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).context("initialising eBPF logging")
    }

    /// Starts recording the allocations of process `pid`.
    pub fn trace_pid(&mut self, pid: u32) -> Result<()> {
        self.traced
            .insert(pid, 1, 0)
            .with_context(|| format!("adding pid {pid} to the traced set"))
    }

    /// Records the Python frames of process `pid` with every allocation.
    pub fn trace_python(&mut self, pid: u32, config: &PyConfig) -> Result<()> {
        self.python
            .insert(pid, config, 0)
            .with_context(|| format!("configuring Python frames of pid {pid}"))
    }

    /// Stops recording process `pid` (it exited: its pid may be reused; or
    /// it is not a target after all).
    pub fn untrace_pid(&mut self, pid: u32) {
        // Either may be absent already.
        let _ = self.traced.remove(&pid);
        let _ = self.python.remove(&pid);
    }

    /// Attaches `program` to `offset` in `file` for every process (the
    /// programs filter by the traced set). Whether it is an entry or a
    /// return probe is the program's own kind; `cookie` tells a program that
    /// serves several functions which one this is.
    pub fn attach(
        &mut self,
        program: &str,
        file: &Path,
        offset: u64,
        cookie: Option<u64>,
    ) -> Result<()> {
        let probe: &mut UProbe = self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("eBPF program {program} missing"))?
            .try_into()?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie,
        };
        probe
            .attach(point, file, UProbeScope::AllProcesses)
            .with_context(|| format!("attaching {program} to {}+{offset:#x}", file.display()))?;
        Ok(())
    }

    pub fn counters(&self) -> Result<KernelCounters> {
        let sum = |index: u32| -> Result<u64> {
            let values = self.counters.get(&index, 0)?;
            Ok(values.iter().sum())
        };
        Ok(KernelCounters {
            events: sum(counter::EVENTS)?,
            lost_events: sum(counter::LOST_EVENTS)?,
            lost_stacks: sum(counter::LOST_STACKS)?,
            in_flight_full: sum(counter::IN_FLIGHT_FULL)?,
            nested_calls: sum(counter::NESTED_CALLS)?,
            stale_in_flight: sum(counter::STALE_IN_FLIGHT)?,
            unmatched_returns: sum(counter::UNMATCHED_RETURNS)?,
            lost_code: sum(counter::LOST_CODE)?,
            unsampled: sum(counter::UNSAMPLED)?,
        })
    }
}

impl Probes {
    /// Removes the probes without making this process wait for it.
    ///
    /// Each uprobe removal waits for an RCU grace period, one after the
    /// other (~80 ms each here, seconds for all of them), in whichever
    /// process drops the last reference to its perf event. So the probes are
    /// silenced now, and a child that shares the descriptors outlives this
    /// process: its exit drops the last references, in the background. If
    /// the child is killed instead, its exit does the same.
    pub fn detach_in_background(mut self) {
        let pids: Vec<u32> = self.traced.keys().filter_map(Result::ok).collect();
        for pid in pids {
            self.untrace_pid(pid);
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
