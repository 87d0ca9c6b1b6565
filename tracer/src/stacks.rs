//! Native stacks: from the raw addresses the kernel captured to interned,
//! checked stacks of (module, file offset) frames.
//!
//! The kernel walks frame pointers from the probed function's entry, where
//! the return address into the caller sits at the stack pointer and is not
//! part of any frame record yet: the walk yields [probe address, caller's
//! caller, ...]. The recorded `caller` is put back in second place. Code
//! built without frame pointers (Debian's python3 and glibc, pyenv builds)
//! leaves arbitrary values in rbp, so every walked frame must look like a
//! return address — inside an executable mapping, right after a call
//! instruction — or the stack is cut there and marked truncated.

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, Hash as _, Hasher as _},
};

use iced_x86::{Decoder, DecoderOptions, FlowControl};

use tracer_common::PyFrame;

use crate::{
    clock::monotonic_ns,
    modules::{ModuleId, Modules},
    proc_maps::ProcessMaps,
    python::{PyLocation, Resolver},
};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct StackId(pub u32);

/// A frame of a native stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NativeFrame {
    /// An address in a mapped file.
    Module { module: ModuleId, file_offset: u64 },
    /// An address outside any file mapping known for the process (JIT code,
    /// or a library mapped and unmapped between two reads of the map).
    Unmapped { addr: u64 },
}

/// An interned Python frame location (`StackTable::python_location`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PyLocId(pub u32);

/// A checked stack, innermost frame first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stack {
    /// The allocation function (`tracer_common::func`); the first frame is
    /// where it was probed.
    pub func: u32,
    pub frames: Vec<NativeFrame>,
    /// Why the stack may be missing outer frames, if it may.
    pub cut: Option<Cut>,
    /// The thread's Python frames, innermost first (empty outside CPython).
    pub python: Vec<PyLocId>,
    /// Why the Python frames may be missing outer ones, if they may.
    pub python_cut: Option<Cut>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cut {
    /// The kernel could not capture a stack at all.
    Lost,
    /// A walked frame did not look like a return address (no frame pointers).
    NotAReturnAddress,
    /// The walk reached the depth limit.
    DepthLimit,
}

/// A stack as the kernel recorded it.
#[derive(Clone, Copy, Debug)]
pub struct RawStack<'a> {
    /// When it was recorded (CLOCK_MONOTONIC ns).
    pub ts_ns: u64,
    /// The allocation function (`tracer_common::func`).
    pub func: u32,
    /// Frame-pointer walk frames, innermost (the probed instruction) first.
    pub frames: &'a [u64],
    /// The return address at the stack pointer, if it could be read.
    pub caller: Option<u64>,
    pub lost: bool,
    pub full: bool,
    /// The thread's Python frames, innermost first.
    pub python: &'a [PyFrame],
    /// The Python frames went deeper than the kernel reads.
    pub python_full: bool,
    /// The Python frame chain could not be read to its end.
    pub python_lost: bool,
}

/// The words of the Python frames in a raw stack key.
fn python_words(frames: &[PyFrame]) -> impl Iterator<Item = u64> + '_ {
    frames
        .iter()
        .flat_map(|f| [f.code, f.instr, f.firstlineno as u32 as u64])
}

/// Raw stack keys (`KEY_HEAD` words of pid, function, exec generation,
/// caller and flags, then the frames) sharing one hash.
type RawKeys = Vec<(Box<[u64]>, StackId)>;
const KEY_HEAD: usize = 4;

/// Interns stacks: equal raw stacks of a process map to one id without
/// being checked again, and equal checked stacks share one id.
#[derive(Default)]
pub struct StackTable {
    /// Hash of (pid, raw stack) -> the raw stacks with that hash.
    raw: HashMap<u64, RawKeys>,
    ids: HashMap<Stack, StackId>,
    stacks: Vec<Stack>,
    pub modules: Modules,
    maps: HashMap<u32, PidMaps>,
    is_return: HashMap<(ModuleId, u64), bool>,
    hasher: std::hash::RandomState,
    pub python: Resolver,
    py_frames: HashMap<(u32, u64, u64, i32), Option<PyLocId>>,
    py_ids: HashMap<PyLocation, PyLocId>,
    py_locations: Vec<PyLocation>,
}

/// What is known of one process's address space.
#[derive(Default)]
struct PidMaps {
    /// The last map read, and when (CLOCK_MONOTONIC ns).
    maps: Option<(ProcessMaps, u64)>,
    /// Execs seen: the same address means another thing after each.
    generation: u64,
}

/// An address found in no mapping makes the map be read again if it was
/// read before the event (a library mapped since), but at most this often:
/// garbage frame-pointer values are in no mapping either.
const MAPS_REREAD_NS: u64 = 1_000_000;

impl StackTable {
    pub fn get(&self, id: StackId) -> &Stack {
        &self.stacks[id.0 as usize]
    }

    /// Stacks interned so far: ids are 0 to `len() - 1`.
    pub(crate) fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn python_location(&self, id: PyLocId) -> &PyLocation {
        &self.py_locations[id.0 as usize]
    }

    /// Reads `pid`'s memory map now and opens its executable files, which
    /// a process that exits soon would take with it (its `/proc/PID/root`).
    /// A process that is gone keeps its last map.
    pub fn refresh_maps(&mut self, pid: u32) {
        if let Ok(maps) = ProcessMaps::read(pid) {
            for m in maps.iter().filter(|m| m.executable && m.is_file()) {
                self.modules.get_or_open(pid, &maps, m);
            }
            self.maps.entry(pid).or_default().maps = Some((maps, monotonic_ns()));
        }
    }

    /// `pid` replaced its image: its earlier map means nothing now.
    pub fn exec(&mut self, pid: u32) {
        let known = self.maps.entry(pid).or_default();
        known.generation += 1;
        known.maps = None;
        self.python.forget(pid);
        self.py_frames.retain(|key, _| key.0 != pid);
        self.refresh_maps(pid);
    }

    pub fn intern(&mut self, pid: u32, raw: RawStack<'_>) -> StackId {
        let generation = self.maps.get(&pid).map_or(0, |m| m.generation);
        let flags = u64::from(raw.lost)
            | u64::from(raw.full) << 1
            | u64::from(raw.caller.is_some()) << 2
            | u64::from(raw.python_full) << 3
            | u64::from(raw.python_lost) << 4;
        let key_head = [
            u64::from(pid) | u64::from(raw.func) << 32,
            generation,
            raw.caller.unwrap_or(0),
            flags | (raw.frames.len() as u64) << 8,
        ];
        let mut h = self.hasher.build_hasher();
        key_head.hash(&mut h);
        raw.frames.hash(&mut h);
        python_words(raw.python).for_each(|w| w.hash(&mut h));
        let hash = h.finish();
        let native_end = KEY_HEAD + raw.frames.len();
        if let Some(bucket) = self.raw.get(&hash) {
            for (key, id) in bucket {
                if key.len() == native_end + raw.python.len() * 3
                    && key[..KEY_HEAD] == key_head
                    && key[KEY_HEAD..native_end] == *raw.frames
                    && key[native_end..]
                        .iter()
                        .copied()
                        .eq(python_words(raw.python))
                {
                    return *id;
                }
            }
        }
        let mut certain = true;
        let stack = self.check(pid, raw, &mut certain);
        let next = StackId(self.stacks.len() as u32);
        let id = *self.ids.entry(stack.clone()).or_insert(next);
        if id == next {
            self.stacks.push(stack);
        }
        // A frame not found in a map older than the event may be found
        // later: such a stack is checked again next time.
        if certain {
            let key: Box<[u64]> = key_head
                .iter()
                .chain(raw.frames)
                .copied()
                .chain(python_words(raw.python))
                .collect();
            self.raw.entry(hash).or_default().push((key, id));
        }
        id
    }

    fn check(&mut self, pid: u32, raw: RawStack<'_>, certain: &mut bool) -> Stack {
        let mut stack = self.check_native(pid, raw, certain);
        for frame in raw.python {
            if let Some(id) = self.python_frame(pid, frame) {
                stack.python.push(id);
            }
        }
        stack.python_cut = if raw.python_lost {
            Some(Cut::Lost)
        } else {
            raw.python_full.then_some(Cut::DepthLimit)
        };
        stack
    }

    /// The location of a Python frame, resolved once per (process, code
    /// object, instruction); `None` for the interpreter's hidden frames.
    fn python_frame(&mut self, pid: u32, frame: &PyFrame) -> Option<PyLocId> {
        let key = (pid, frame.code, frame.instr, frame.firstlineno);
        if let Some(known) = self.py_frames.get(&key) {
            return *known;
        }
        let id = self.python.resolve(pid, frame).map(|location| {
            let next = PyLocId(self.py_locations.len() as u32);
            let id = *self.py_ids.entry(location.clone()).or_insert(next);
            if id == next {
                self.py_locations.push(location);
            }
            id
        });
        self.py_frames.insert(key, id);
        id
    }

    fn check_native(&mut self, pid: u32, raw: RawStack<'_>, certain: &mut bool) -> Stack {
        if raw.lost {
            return Stack {
                func: raw.func,
                frames: Vec::new(),
                cut: Some(Cut::Lost),
                python: Vec::new(),
                python_cut: None,
            };
        }
        let mut frames = Vec::with_capacity(raw.frames.len() + 1);
        let mut cut = raw.full.then_some(Cut::DepthLimit);
        let Some((&probed, walked)) = raw.frames.split_first() else {
            return Stack {
                func: raw.func,
                frames,
                cut: Some(Cut::Lost),
                python: Vec::new(),
                python_cut: None,
            };
        };
        frames.push(self.locate(pid, raw.ts_ns, probed, Some(certain)));
        // Without the caller there is a gap right away: nothing walked can follow.
        let mut complete = raw.caller.is_some();
        let returns = raw
            .caller
            .map(|caller| std::iter::once(caller).chain(walked.iter().copied()));
        for (i, addr) in returns.into_iter().flatten().enumerate() {
            // The probed function and its caller are code for sure; a walked
            // frame in no mapping is most likely garbage, not a new library.
            let reread = if i == 0 { Some(&mut *certain) } else { None };
            let frame = self.locate(pid, raw.ts_ns, addr, reread);
            if !self.is_return_address(frame) {
                // Frames past a gap would read as its callers: stop here.
                complete = false;
                break;
            }
            frames.push(frame);
        }
        if !complete {
            cut = Some(Cut::NotAReturnAddress);
        }
        Stack {
            func: raw.func,
            frames,
            cut,
            python: Vec::new(),
            python_cut: None,
        }
    }

    /// The frame at `addr`. With `reread`, an address in no mapping of a
    /// map read before the event makes it read again (rate-limited; when it
    /// is not, `reread` is set false: the result may change).
    fn locate(
        &mut self,
        pid: u32,
        ts_ns: u64,
        addr: u64,
        reread: Option<&mut bool>,
    ) -> NativeFrame {
        let read_at = self
            .maps
            .get(&pid)
            .and_then(|m| m.maps.as_ref())
            .map(|(maps, at)| (maps.find(addr).is_some(), *at));
        match (read_at, reread) {
            (None, _) => self.refresh_maps(pid),
            (Some((false, at)), Some(certain)) if at < ts_ns => {
                if monotonic_ns().saturating_sub(at) >= MAPS_REREAD_NS {
                    self.refresh_maps(pid);
                } else {
                    *certain = false;
                }
            }
            _ => {}
        }
        let Some((maps, _)) = self.maps.get(&pid).and_then(|m| m.maps.as_ref()) else {
            return NativeFrame::Unmapped { addr };
        };
        match maps.find(addr) {
            Some(m) if m.is_file() => {
                let file_offset = m.file_offset(addr);
                let module = self.modules.get_or_open(pid, maps, m);
                NativeFrame::Module {
                    module,
                    file_offset,
                }
            }
            _ => NativeFrame::Unmapped { addr },
        }
    }

    /// Whether the instruction before `frame` is a call of the length that
    /// ends exactly there.
    fn is_return_address(&mut self, frame: NativeFrame) -> bool {
        let NativeFrame::Module {
            module,
            file_offset,
        } = frame
        else {
            return false;
        };
        if let Some(known) = self.is_return.get(&(module, file_offset)) {
            return *known;
        }
        let verdict = self.modules.get(module).elf.as_ref().is_ok_and(|elf| {
            follows_call(elf.bytes_at(file_offset.saturating_sub(7), 7.min(file_offset as usize)))
        });
        self.is_return.insert((module, file_offset), verdict);
        verdict
    }
}

/// Whether `before` (the bytes just before a return address) ends with a
/// complete call instruction. x86-64 calls are 2 to 7 bytes long.
fn follows_call(before: &[u8]) -> bool {
    (2..=before.len()).any(|len| {
        let code = &before[before.len() - len..];
        let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
        let ins = decoder.decode();
        !ins.is_invalid()
            && ins.len() == len
            && matches!(
                ins.flow_control(),
                FlowControl::Call | FlowControl::IndirectCall
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_stacks_of_this_process() {
        let pid = std::process::id();
        let malloc = libc::malloc as *const () as u64;
        let raw = RawStack {
            ts_ns: monotonic_ns(),
            func: tracer_common::func::MALLOC,
            frames: &[malloc],
            caller: None,
            lost: false,
            full: false,
            python: &[],
            python_full: false,
            python_lost: false,
        };
        let mut table = StackTable::default();
        let id = table.intern(pid, raw);
        let stack = table.get(id).clone();
        assert_eq!(stack.cut, Some(Cut::NotAReturnAddress), "no caller");
        let NativeFrame::Module { module, .. } = stack.frames[0] else {
            panic!("malloc not in a file mapping: {stack:?}");
        };
        assert!(
            table.modules.get(module).path.contains("libc"),
            "{}",
            table.modules.get(module).path
        );
        assert_eq!(table.intern(pid, raw), id, "same raw stack, same id");
        // After an exec the raw stack is checked again, and reads the same here.
        table.exec(pid);
        assert_eq!(table.intern(pid, raw), id);
        let lost = RawStack { lost: true, ..raw };
        let lost = table.intern(pid, lost);
        assert_eq!(table.get(lost).cut, Some(Cut::Lost));
    }

    #[test]
    fn recognises_calls_before_return_addresses() {
        // call rel32
        assert!(follows_call(&[0x90, 0x90, 0xe8, 0x10, 0x20, 0x30, 0x40]));
        // call rax
        assert!(follows_call(&[0x01, 0x02, 0x03, 0x04, 0x05, 0xff, 0xd0]));
        // call qword ptr [rip+disp32]
        assert!(follows_call(&[0x00, 0xff, 0x15, 0x01, 0x02, 0x03, 0x04]));
        // call qword ptr [rbx+8]
        assert!(follows_call(&[0, 0, 0, 0, 0xff, 0x53, 0x08]));
        // mov rbx, rdi; pop rbp... not a call
        assert!(!follows_call(&[0x48, 0x89, 0xfb, 0x5d, 0xc3, 0x90, 0x90]));
        assert!(!follows_call(&[]));
    }
}
