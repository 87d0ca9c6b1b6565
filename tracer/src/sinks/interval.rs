//! What each key allocated between two snapshots, from running totals:
//! the one place a recording's intervals are counted, for the daemon's
//! windows (per process and stack, from the heap model's totals) and
//! `tracer top`'s refreshes (per process, thread and stack; per process).

use std::{collections::HashMap, hash::Hash};

use crate::model::heap::Amount;

/// Each key's running total when it was last counted.
pub struct Interval<K> {
    counted: HashMap<K, Amount>,
}

impl<K> Default for Interval<K> {
    fn default() -> Self {
        Self {
            counted: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Interval<K> {
    /// What `total` grew by since `key` was last counted (all of it, the
    /// first time), without counting it.
    pub fn peek(&self, key: &K, total: Amount) -> Amount {
        let before = self.counted.get(key).copied().unwrap_or_default();
        Amount {
            bytes: total.bytes.saturating_sub(before.bytes),
            count: total.count.saturating_sub(before.count),
        }
    }

    /// What `total` grew by since `key` was last counted; counts from
    /// `total` on.
    pub fn count(&mut self, key: K, total: Amount) -> Amount {
        let grew = self.peek(&key, total);
        self.counted.insert(key, total);
        grew
    }

    /// Whether `key` was counted before.
    pub fn knows(&self, key: &K) -> bool {
        self.counted.contains_key(key)
    }

    /// Counts every key from `totals` on, forgetting the keys not in it.
    pub fn count_all(&mut self, totals: impl IntoIterator<Item = (K, Amount)>) {
        self.counted = totals.into_iter().collect();
    }

    /// Forgets the keys `keep` refuses.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.counted.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(bytes: u64, count: u64) -> Amount {
        Amount { bytes, count }
    }

    #[test]
    fn counts_what_grew_since_the_last_count() {
        let mut i = Interval::default();
        assert_eq!(
            i.peek(&1, a(100, 2)),
            a(100, 2),
            "all of it, the first time"
        );
        assert!(!i.knows(&1));
        assert_eq!(i.count(1, a(100, 2)), a(100, 2));
        assert_eq!(i.peek(&1, a(150, 3)), a(50, 1));
        assert_eq!(i.peek(&1, a(150, 3)), a(50, 1), "peeking counts nothing");
        assert_eq!(i.count(1, a(150, 3)), a(50, 1));
        assert_eq!(i.count(1, a(150, 3)), a(0, 0));
        i.count_all([(2, a(10, 1))]);
        assert!(!i.knows(&1) && i.knows(&2));
        i.retain(|k| *k != 2);
        assert!(!i.knows(&2));
    }
}
