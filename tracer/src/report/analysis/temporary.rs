//! Temporary allocations: those freed soon after they were made, by stack,
//! gathered one event at a time in the heap model's pass over a capture.

use std::collections::HashMap;

use super::{Group, sorted};
use crate::{
    event::{Block, HeapEvent, Pid, StackId, Tid},
    model::heap::Amount,
};

/// What makes an allocation temporary: freed within a time, or before a
/// number of other allocations of its thread (memray's threshold).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temporary {
    Within { ns: u64 },
    BeforeAllocations(u64),
}

impl std::fmt::Display for Temporary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Temporary::Within { ns } => write!(f, "freed within {} ms", *ns as f64 / 1e6),
            Temporary::BeforeAllocations(n) => {
                write!(f, "freed before {n} more allocations of the same thread")
            }
        }
    }
}

/// A live block, as far as temporaries care.
struct Live {
    stack: StackId,
    amount: Amount,
    ts_ns: u64,
    /// Its thread's allocations made before it, it included.
    seq: u64,
}

/// A block of one process.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct At {
    pid: Pid,
    addr: u64,
}

pub struct Temporaries {
    threshold: Temporary,
    live: HashMap<At, Live>,
    /// Allocations made so far, per (process, thread).
    seq: HashMap<(Pid, Tid), u64>,
    groups: HashMap<(Pid, StackId), Amount>,
}

impl Temporaries {
    pub fn new(threshold: Temporary) -> Self {
        Self {
            threshold,
            live: HashMap::new(),
            seq: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    /// Mappings are long-lived by nature; the heap's churn is the point:
    /// only blocks are followed.
    pub fn apply(&mut self, e: &HeapEvent) {
        let Some(change) = e.kind.block_change() else {
            return;
        };
        if let Some(addr) = change.freed {
            self.free(e, addr);
        }
        if let Some(block) = change.made {
            self.alloc(e, block);
        }
    }

    pub fn groups(self) -> Vec<Group> {
        sorted(
            self.groups
                .into_iter()
                .map(|((pid, stack), amount)| Group { pid, stack, amount })
                .collect(),
        )
    }

    fn alloc(&mut self, e: &HeapEvent, block: Block) {
        let n = self.seq.entry((e.pid, e.tid)).or_default();
        *n += 1;
        self.live.insert(
            At {
                pid: e.pid,
                addr: block.addr,
            },
            Live {
                stack: block.stack,
                amount: Amount {
                    bytes: block.size,
                    count: u64::from(block.count),
                },
                ts_ns: e.ts_ns,
                seq: *n,
            },
        );
    }

    fn free(&mut self, e: &HeapEvent, addr: u64) {
        let Some(live) = self.live.remove(&At { pid: e.pid, addr }) else {
            return;
        };
        let soon = match self.threshold {
            Temporary::Within { ns } => e.ts_ns.saturating_sub(live.ts_ns) <= ns,
            Temporary::BeforeAllocations(k) => {
                let now = self.seq.get(&(e.pid, e.tid)).copied().unwrap_or(0);
                now.saturating_sub(live.seq) <= k
            }
        };
        if soon {
            let g = self.groups.entry((e.pid, live.stack)).or_default();
            g.bytes += live.amount.bytes;
            g.count += live.amount.count;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn on(tid: Tid, ts_ns: u64, kind: EventKind) -> HeapEvent {
        HeapEvent {
            pid: 1,
            tid,
            ts_ns,
            kind,
        }
    }

    fn alloc(tid: Tid, addr: u64, size: u64, stack: u32, ts_ns: u64) -> HeapEvent {
        on(
            tid,
            ts_ns,
            EventKind::Alloc(Block {
                addr,
                size,
                count: 1,
                stack: StackId(stack),
            }),
        )
    }

    fn free(tid: Tid, addr: u64, ts_ns: u64) -> HeapEvent {
        on(tid, ts_ns, EventKind::Free { addr })
    }

    #[test]
    fn temporary_by_time_and_by_allocations() {
        let events = [
            alloc(1, 0x10, 100, 1, 1_000),
            free(1, 0x10, 1_500), // 500 ns: temporary
            alloc(1, 0x20, 200, 2, 2_000),
            alloc(1, 0x30, 50, 3, 2_100),
            alloc(1, 0x40, 50, 3, 2_200),
            free(1, 0x20, 9_000), // 7 us later, 2 allocations in between
        ];
        let temporary = |rule| {
            let mut t = Temporaries::new(rule);
            events.iter().for_each(|e| t.apply(e));
            t.groups()
        };
        let by_time = temporary(Temporary::Within { ns: 1_000 });
        assert_eq!(
            by_time
                .iter()
                .map(|g| (g.stack.0, g.amount.count))
                .collect::<Vec<_>>(),
            [(1, 1)]
        );
        let by_count = temporary(Temporary::BeforeAllocations(2));
        assert_eq!(
            by_count
                .iter()
                .map(|g| (g.stack.0, g.amount.bytes))
                .collect::<Vec<_>>(),
            [(2, 200), (1, 100)]
        );
    }
}
