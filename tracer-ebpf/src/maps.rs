//! Every map and global of the programs, with its size and the reason for
//! it; what happens when one fills is in docs/maps.md. Userspace finds each
//! by its name: renaming one breaks tracer/src/probes.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{AllocRecord, CodeBudget, CodeKey, PyConfig, SampledKey, counter, sampling};

/// Processes traced at once (`TRACED`, `PY_PROCS`): enough for `--all` on a
/// busy host. A lookup miss is the whole cost an untraced process pays
/// beyond the trap.
const MAX_PROCESSES: u32 = 16384;

/// Threads inside an allocation call at the same instant (`IN_FLIGHT`):
/// 16k is far beyond any real process set.
const MAX_THREADS_IN_CALL: u32 = 16384;

/// Code objects remembered as copied (`CODE_SEEN`): a process runs
/// thousands at most, and an eviction only costs a second copy.
const MAX_CODE_OBJECTS: u32 = 65536;

/// Processes traced (tgid -> `tracer_common::traced`), written by userspace
/// and by the fork program (children of traced processes).
#[map]
pub static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PROCESSES, 0);

/// Allocation calls between entry and return, per thread (pid_tgid). LRU so
/// that threads which die inside a call cannot fill it.
#[map]
pub static IN_FLIGHT: LruHashMap<u64, AllocRecord> =
    LruHashMap::with_max_entries(MAX_THREADS_IN_CALL, 0);

/// Where a record is built before it is copied into `IN_FLIGHT`: an
/// `AllocRecord` is larger than the 512-byte BPF stack.
#[map]
pub static SCRATCH: PerCpuArray<AllocRecord> = PerCpuArray::with_max_entries(1, 0);

/// Records to userspace. The size here is a placeholder: userspace sets it
/// at load time (`--ring-mb`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// How to read the Python frames of each traced CPython process, written by
/// userspace once it has found the interpreter.
#[map]
pub static PY_PROCS: HashMap<u32, PyConfig> = HashMap::with_max_entries(MAX_PROCESSES, 0);

/// Where a finished record (fixed part, native frames, Python frames) is
/// assembled before it is copied into the ring buffer: the largest one is
/// far larger than the BPF stack.
#[map]
pub static OUT: PerCpuArray<[u64; AllocRecord::MAX_WIRE_LEN / 8]> =
    PerCpuArray::with_max_entries(1, 0);

/// Offset of `signal` in the kernel's `task_struct` and of `live` (the
/// threads left) in its `signal_struct`, from its BTF, set by userspace at
/// load: whether an exiting thread is its process's last. 0: the thread
/// group leader's exit stands for the process's.
#[unsafe(no_mangle)]
pub static TASK_SIGNAL_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
pub static SIGNAL_LIVE_OFFSET: Global<u64> = Global::new(0);
/// The allocation entry programs are attached as uprobe sessions (Linux
/// 6.13+): each is also run at its function's return, when it asked for it,
/// instead of a separate return probe. Set by userspace at load.
#[unsafe(no_mangle)]
pub static SESSION: Global<u8> = Global::new(0);

/// Offsets in the kernel's `task_struct` of `pid`, `tgid` and `mm`, from its
/// BTF, set by userspace at load; 0 turns fork following off.
#[unsafe(no_mangle)]
pub static TASK_PID_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
pub static TASK_TGID_OFFSET: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
pub static TASK_MM_OFFSET: Global<u64> = Global::new(0);

/// Code objects already copied to userspace (`CodeRecord`). LRU: a forgotten
/// one is copied again when next seen.
#[map]
pub static CODE_SEEN: LruHashMap<CodeKey, u8> = LruHashMap::with_max_entries(MAX_CODE_OBJECTS, 0);

/// Slots of `CODE_RECENT`: a power of two, so that a slot is found with a
/// mask the verifier follows. A service's hot frames run a few hundred code
/// objects; 1,024 slots of 16 bytes are 16 KiB per CPU.
pub const CODE_RECENT_SLOTS: u32 = 1024;

/// The code objects this CPU last found in `CODE_SEEN`, one per slot
/// (direct-mapped by address): a walk checks each frame's code object, and
/// an array slot costs a few ns where the LRU hash lookup costs ~60
/// (docs/python-frames.md, "What a walk costs"). A slot only ever holds a
/// key that was copied, so a hit skips nothing that was not sent.
#[map]
pub static CODE_RECENT: PerCpuArray<CodeKey> = PerCpuArray::with_max_entries(CODE_RECENT_SLOTS, 0);

/// Code object copies one process may make at once, and how often it gets
/// one more: a copy is up to 4.7 KB of ring buffer, and a process that runs
/// new code objects without end (a frame chain of its own making) would
/// fill the ring and make every other process lose events. 1,024 copies
/// (4.7 MB) cover an interpreter's start; then 128 a second (600 KB/s).
/// A code object not copied is read from the process's memory instead.
pub const CODE_BURST: u32 = 1024;
pub const CODE_NS_PER_COPY: u64 = 1_000_000_000 / 128;

/// Each process's budget of code object copies (`CODE_BURST`). LRU: a
/// forgotten process starts with a full budget again.
#[map]
pub static CODE_BUDGET: LruHashMap<u32, CodeBudget> =
    LruHashMap::with_max_entries(MAX_PROCESSES, 0);

/// Exponential gaps between samples, in units of SAMPLE_BYTES / 2^16, set
/// by userspace (tracer's sampling.rs): a random entry is a random gap.
#[map]
pub static GAP_TABLE: Array<u32> = Array::with_max_entries(sampling::GAP_TABLE_LEN as u32, 0);

/// Bytes left until the next sample, per CPU (0: not drawn yet). The
/// bytes are a Poisson process, so the count may move between CPUs as
/// threads do without biasing anything.
#[map]
pub static SAMPLE_LEFT: PerCpuArray<i64> = PerCpuArray::with_max_entries(1, 0);

/// With sampling: the live addresses of sampled allocations, so that only
/// their frees are sent. Userspace sizes it (LRU maps are preallocated):
/// one entry without sampling. LRU: an allocation evicted unfreed would
/// later show as a leak.
#[map]
pub static SAMPLED: LruHashMap<SampledKey, u8> = LruHashMap::with_max_entries(1, 0);

/// Launched commands to hold at `Py_FinalizeEx` until userspace has read
/// the types of their live objects (tgid -> 1), written by userspace. One
/// command per recording, a few with its forks: 64 is plenty. The entry is
/// removed when the hold is sent, so a process is held once.
#[map]
pub static HOLD_AT_FINALIZE: HashMap<u32, u8> = HashMap::with_max_entries(64, 0);

/// Per-CPU counters, indexed by `tracer_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Offset of `thread.fsbase` in the kernel's `task_struct` (from its BTF),
/// set by userspace at load; 0 turns Python frames off.
#[unsafe(no_mangle)]
pub static FSBASE_OFFSET: Global<u64> = Global::new(0);

/// `--all`: report every exec, and trace processes named python* from their
/// first instruction (userspace drops those that turn out not to be CPython).
#[unsafe(no_mangle)]
pub static ALL_EXECS: Global<u8> = Global::new(0);

/// `--sample-bytes`: the mean bytes between samples; 0 records every call.
#[unsafe(no_mangle)]
pub static SAMPLE_BYTES: Global<u64> = Global::new(0);
