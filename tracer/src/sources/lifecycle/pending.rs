//! Events of processes the kernel traces that are not targets yet: a
//! process `--all` traced by name at its exec, or a traced process that
//! exec'd and must show a CPython again. They are held, in order, until the
//! process is adopted (then handed on, so that nothing it did before is
//! lost) or let go (then dropped). What the bound does not let be held is
//! counted per process, and the report says so.

use std::collections::{HashMap, VecDeque};

use crate::event::{HeapEvent, Pid};

/// Events held at most: ~40 MB of them. A process is adopted within
/// milliseconds of its exec, and a busy host's unadopted execs rarely hold
/// more than a few thousand events.
const MAX_HELD: usize = 1 << 20;

#[derive(Default)]
pub struct Pending {
    held: VecDeque<HeapEvent>,
    /// Events dropped for want of room, by process.
    lost: HashMap<Pid, u64>,
}

impl Pending {
    /// The events of targets among `events`, in order; the others are held.
    pub fn admit(
        &mut self,
        events: Vec<HeapEvent>,
        is_target: impl Fn(Pid) -> bool,
    ) -> Vec<HeapEvent> {
        let mut ready = Vec::with_capacity(events.len());
        for e in events {
            if is_target(e.pid) {
                ready.push(e);
                continue;
            }
            if self.held.len() >= MAX_HELD
                && let Some(oldest) = self.held.pop_front()
            {
                *self.lost.entry(oldest.pid).or_default() += 1;
            }
            self.held.push_back(e);
        }
        ready
    }

    /// `pid` was adopted: its held events, in order, and how many could
    /// not be held.
    pub fn release(&mut self, pid: Pid) -> Released {
        let mut events = Vec::new();
        self.held.retain(|e| {
            let mine = e.pid == pid;
            if mine {
                events.push(*e);
            }
            !mine
        });
        Released {
            events,
            lost: self.lost.remove(&pid).unwrap_or(0),
        }
    }

    /// `pid` was let go: its held events are dropped.
    pub fn drop_pid(&mut self, pid: Pid) {
        self.held.retain(|e| e.pid != pid);
        self.lost.remove(&pid);
    }
}

/// What an adopted process did before it was adopted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub events: Vec<HeapEvent>,
    /// Events that could not be held.
    pub lost: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn free(pid: Pid, addr: u64) -> HeapEvent {
        HeapEvent {
            pid,
            tid: pid,
            ts_ns: addr,
            kind: EventKind::Free { addr },
        }
    }

    #[test]
    fn holds_until_adopted_or_dropped() {
        let mut p = Pending::default();
        let ready = p.admit(
            vec![free(1, 1), free(2, 2), free(3, 3), free(2, 4), free(1, 5)],
            |pid| pid == 1,
        );
        assert_eq!(ready, [free(1, 1), free(1, 5)]);
        let released = p.release(2);
        assert_eq!(released.events, [free(2, 2), free(2, 4)]);
        assert_eq!(released.lost, 0);
        p.drop_pid(3);
        assert!(p.release(3).events.is_empty());
        assert!(p.held.is_empty());
    }

    #[test]
    fn counts_what_it_cannot_hold() {
        let mut p = Pending::default();
        let many: Vec<HeapEvent> = (0..MAX_HELD as u64 + 10).map(|i| free(7, i)).collect();
        p.admit(many, |_| false);
        let released = p.release(7);
        assert_eq!(released.lost, 10);
        assert_eq!(released.events.len(), MAX_HELD);
        assert_eq!(released.events[0], free(7, 10), "the oldest went first");
    }
}
