//! A process's live bytes by stack at its peak, kept while the events are
//! applied, so that the peak report needs no second pass over a capture.
//!
//! Copying the live set at every new peak would cost a copy per allocation
//! while the heap grows. Instead the changes since the last peak are summed
//! per stack, and folded into the peak's picture when a new peak comes: each
//! event costs one map update, and memory stays bounded by the stacks.

use std::collections::HashMap;

use super::Amount;
use crate::event::StackId;

#[derive(Default)]
pub struct PeakStacks {
    /// Live amounts per stack at the last peak.
    at_peak: HashMap<StackId, Amount>,
    /// What each stack gained and lost since then.
    since: HashMap<StackId, Change>,
}

#[derive(Clone, Copy, Default)]
struct Change {
    added: Amount,
    removed: Amount,
}

impl PeakStacks {
    pub fn added(&mut self, stack: StackId, amount: Amount) {
        self.since.entry(stack).or_default().added.add(amount);
    }

    pub fn removed(&mut self, stack: StackId, amount: Amount) {
        self.since.entry(stack).or_default().removed.add(amount);
    }

    /// The live set now is the new peak.
    pub fn peak_reached(&mut self) {
        for (stack, change) in self.since.drain() {
            let live = self.at_peak.entry(stack).or_default();
            live.add(change.added);
            live.sub(change.removed);
            if *live == Amount::default() {
                self.at_peak.remove(&stack);
            }
        }
    }

    /// Live amounts per stack at the peak.
    pub fn at_peak(&self) -> &HashMap<StackId, Amount> {
        &self.at_peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_changes_at_each_peak() {
        let a = |bytes| Amount { bytes, count: 1 };
        let mut p = PeakStacks::default();
        p.added(StackId(1), a(100));
        p.added(StackId(2), a(300));
        p.peak_reached();
        p.removed(StackId(2), a(300));
        p.added(StackId(3), a(50));
        // No new peak: the picture is still the first one.
        assert_eq!(p.at_peak().len(), 2);
        assert_eq!(p.at_peak()[&StackId(2)].bytes, 300);
        p.added(StackId(3), a(400));
        p.peak_reached();
        assert_eq!(p.at_peak().get(&StackId(2)), None);
        assert_eq!(
            p.at_peak()[&StackId(3)],
            Amount {
                bytes: 450,
                count: 2
            }
        );
    }
}
