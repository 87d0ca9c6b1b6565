//! The events one recording is made of, in the terms every stage shares:
//! the collector makes them from kernel records, the heap model applies
//! them, the capture stores them and the reports replay them.

use serde::{Deserialize, Serialize};

/// A process id (the kernel's tgid).
pub type Pid = u32;
/// A thread id (the kernel's pid).
pub type Tid = u32;

/// An interned stack (see `model::stacks`); a capture defines each id once.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct StackId(pub u32);

/// Something that happened to one process's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeapEvent {
    pub pid: Pid,
    pub tid: Tid,
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    pub kind: EventKind,
}

/// A heap block as an allocation (or a reallocation) made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub addr: u64,
    /// Bytes, and allocations, this block stands for: the call's own size
    /// and 1, or with sampling the estimate it is weighted to.
    pub size: u64,
    pub count: u32,
    pub stack: StackId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Alloc(Block),
    /// `realloc` of a non-NULL pointer: `old_addr` is freed, `block` made
    /// (possibly at the same address).
    Realloc {
        old_addr: u64,
        block: Block,
    },
    Free {
        addr: u64,
    },
    /// An anonymous `mmap`.
    Map {
        addr: u64,
        len: u64,
        stack: StackId,
        /// Made with `MAP_STACK`: a thread's stack (glibc maps every thread
        /// stack so), which the reports keep apart from the heap.
        thread_stack: bool,
    },
    Remap {
        old_addr: u64,
        old_len: u64,
        addr: u64,
        len: u64,
        stack: StackId,
    },
    Unmap {
        addr: u64,
        len: u64,
    },
    /// The process began to exit: its live set now is its leak set.
    Exiting {
        reason: ExitReason,
    },
    /// The process was just forked from `parent`: it starts with a copy of
    /// the parent's live blocks and mappings, so that its frees of them
    /// match (they are its parent's allocations, not its own leaks).
    Fork {
        parent: Pid,
    },
    /// The process replaced its image: everything it had is gone.
    Exec,
}

impl EventKind {
    /// For heap blocks (not mappings): the address freed first, if any, and
    /// the block made, if any. `Alloc`, `Realloc` and `Free` read the same
    /// way through this to whoever tracks blocks.
    pub fn block_change(&self) -> Option<BlockChange> {
        match *self {
            EventKind::Alloc(block) => Some(BlockChange {
                freed: None,
                made: Some(block),
            }),
            EventKind::Realloc { old_addr, block } => Some(BlockChange {
                freed: Some(old_addr),
                made: Some(block),
            }),
            EventKind::Free { addr } => Some(BlockChange {
                freed: Some(addr),
                made: None,
            }),
            _ => None,
        }
    }
}

/// What one event did to the heap's blocks: a free, then an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockChange {
    pub freed: Option<u64>,
    pub made: Option<Block>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// CPython's `Py_FinalizeEx` was entered.
    PyFinalize,
    /// libc's `exit` was entered.
    LibcExit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realloc_reads_as_free_then_alloc() {
        let block = Block {
            addr: 0x20,
            size: 8,
            count: 1,
            stack: StackId(3),
        };
        let change = EventKind::Realloc {
            old_addr: 0x10,
            block,
        }
        .block_change();
        assert_eq!(
            change,
            Some(BlockChange {
                freed: Some(0x10),
                made: Some(block)
            })
        );
        assert_eq!(EventKind::Unmap { addr: 0, len: 1 }.block_change(), None);
    }
}
