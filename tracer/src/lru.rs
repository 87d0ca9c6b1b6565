//! A map with a capacity that forgets what was used least recently: for
//! caches fed by what traced processes do (code objects, line tables),
//! which a process making new code without end would otherwise grow
//! without end. When full, the older half goes at once, so that each
//! insertion costs O(log n) on average.

use std::{collections::HashMap, hash::Hash};

pub struct Lru<K, V> {
    entries: HashMap<K, (V, u64)>,
    capacity: usize,
    tick: u64,
}

impl<K: Hash + Eq, V> Lru<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(2),
            tick: 0,
        }
    }

    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(v, used)| {
            *used = tick;
            &*v
        })
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|(v, _)| v)
    }

    /// Inserts `value`; the least recently used half goes first if full.
    pub fn insert(&mut self, key: K, value: V) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let mut ticks: Vec<u64> = self.entries.values().map(|(_, t)| *t).collect();
            let half = ticks.len() / 2;
            let (_, &mut median, _) = ticks.select_nth_unstable(half);
            self.entries.retain(|_, (_, t)| *t > median);
        }
        self.tick += 1;
        self.entries.insert(key, (value, self.tick));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_recently_used() {
        let mut lru = Lru::new(4);
        for i in 0..4 {
            lru.insert(i, i * 10);
        }
        assert_eq!(lru.get(&0), Some(&0));
        lru.insert(4, 40);
        assert!(lru.len() <= 4);
        assert_eq!(lru.get(&0), Some(&0), "used last");
        assert_eq!(lru.get(&4), Some(&40));
        assert_eq!(lru.get(&1), None, "the oldest went");
        for i in 5..1000 {
            lru.insert(i, i);
            assert!(lru.len() <= 4);
        }
        assert_eq!(lru.remove(&999), Some(999));
    }
}
