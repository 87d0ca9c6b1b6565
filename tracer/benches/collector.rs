//! How fast the collector turns ring-buffer records into heap-model state
//! on one core, and what each live allocation costs in memory. Run by
//! `cargo xtask bench`; prints one JSON line last.
//!
//! The records are what the kernel sends for a Python service: malloc
//! records with 3 native and 12 Python frames from 2,000 distinct stacks,
//! and frees of what was allocated 100,000 records earlier.

use std::{
    alloc::{GlobalAlloc, Layout},
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use tracer::{
    capture::{Record, Writer},
    model::Model,
    sources::collector::Collector,
};
use tracer_common::{AllocRecord, FreeRecord, Header, MAX_STACK_DEPTH, PyFrame, flags, func, kind};

/// tracer's allocator, counting the bytes its callers hold: the memory a
/// live allocation costs is what the model holds for it. The resident size
/// cannot tell: the allocator keeps freed pages (the records' own buffers,
/// grown by doubling) and the model fills them without moving it.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to mimalloc unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const EVENTS: usize = 2_000_000;
const STACKS: u64 = 2_000;
const LIVE_WINDOW: usize = 100_000;
const NATIVE_FRAMES: usize = 3;
const PY_FRAMES: usize = 12;

fn bytes_of<T: Copy>(value: &T, len: usize) -> &[u8] {
    // SAFETY: T is plain old data from tracer-common; len <= size_of::<T>().
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), len) }
}

/// The records, back to back, with their lengths.
fn records(pid: u32) -> (Vec<u8>, Vec<usize>) {
    let malloc = libc::malloc as *const () as u64;
    let mut out = Vec::new();
    let mut lens = Vec::new();
    let mut push = |bytes: &[u8]| {
        out.extend_from_slice(bytes);
        lens.push(bytes.len());
    };
    let addr = |i: usize| 0x7f00_0000_0000 + (i as u64) * 64;
    let mut allocs = 0;
    for i in 0..EVENTS {
        let header = |kind| Header {
            kind,
            pid,
            tid: pid,
            flags: 0,
            ts_ns: i as u64 * 300,
        };
        if i % 2 == 1 && allocs > LIVE_WINDOW {
            let free = FreeRecord {
                header: header(kind::FREE),
                addr: addr(allocs - LIVE_WINDOW),
                len: 0,
            };
            push(bytes_of(&free, size_of::<FreeRecord>()));
            continue;
        }
        let stack = (i as u64 * 7919) % STACKS;
        let mut rec = AllocRecord {
            header: Header {
                flags: flags::CALLER_LOST,
                ..header(kind::ALLOC)
            },
            func: func::MALLOC,
            nesting: 0,
            size: 32 + stack,
            addr: addr(allocs),
            old_addr: 0,
            old_len: 0,
            out_ptr: 0,
            caller: 0,
            entry_sp: 0,
            stack_len: NATIVE_FRAMES as u32,
            py_len: PY_FRAMES as u32,
            stack: [0; MAX_STACK_DEPTH],
        };
        for (f, slot) in rec.stack.iter_mut().take(NATIVE_FRAMES).enumerate() {
            *slot = malloc + f as u64;
        }
        let mut wire = bytes_of(&rec, AllocRecord::wire_len(NATIVE_FRAMES, 0)).to_vec();
        for f in 0..PY_FRAMES as u64 {
            let frame = PyFrame {
                code: 0x5000_0000 + (stack * 31 + f) % 4_000 * 0x100,
                instr: 0x6000_0000 + f,
                firstlineno: f as i32,
                _pad: 0,
            };
            wire.extend_from_slice(bytes_of(&frame, size_of::<PyFrame>()));
        }
        push(&wire);
        allocs += 1;
    }
    (out, lens)
}

fn main() {
    let pid = std::process::id();
    let (bytes, lens) = records(pid);

    // Memory per live allocation: a million of them, never freed.
    let before = HELD.load(Ordering::Relaxed);
    let mut live = Collector::new(None);
    let mut live_model = Model::default();
    let mut at = 0;
    let mut allocs = 0u64;
    for len in &lens {
        let record = &bytes[at..at + len];
        at += len;
        if record.len() > size_of::<FreeRecord>() {
            live.apply(record, &mut live_model);
            // The sinks would take them; the model is what is measured.
            live.take_events();
            allocs += 1;
            if allocs == 1_000_000 {
                break;
            }
        }
    }
    let per_live = HELD.load(Ordering::Relaxed).saturating_sub(before) as f64 / allocs as f64;
    let live_total = live_model
        .heap()
        .process(pid)
        .map_or(0, |p| p.totals().live_count);

    drop((live, live_model));

    // Decoding and applying, with the events the sinks get handed over in
    // batches as the event loop does.
    let mut collector = Collector::new(None);
    let mut model = Model::default();
    let mut journal = Vec::new();
    let start = Instant::now();
    let mut at = 0;
    for (i, len) in lens.iter().enumerate() {
        collector.apply(&bytes[at..at + len], &mut model);
        at += len;
        if i % 10_000 == 0 {
            journal.append(&mut collector.take_events());
        }
    }
    let apply_s = start.elapsed().as_secs_f64();
    journal.append(&mut collector.take_events());

    // What the capture thread does with each event.
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    let mut writer = Writer::new(null).expect("/dev/null");
    let start = Instant::now();
    for event in &journal {
        writer.write(&Record::Event(*event)).expect("write");
    }
    writer.finish().expect("finish");
    let capture_s = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "events": lens.len(),
            "stacks": STACKS,
            "events_per_s": lens.len() as f64 / apply_s,
            "capture_events_per_s": lens.len() as f64 / capture_s,
            "live_allocations": live_total,
            "bytes_per_live_allocation": per_live,
        })
    );
}
