//! A process's anonymous mappings as address ranges, so that a partial
//! `munmap` trims or splits them as the kernel does.

use std::collections::BTreeMap;

use super::Allocation;

/// One mapping; `alloc.size` is its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub alloc: Allocation,
    /// Made with `MAP_STACK`: a thread's stack.
    pub thread_stack: bool,
}

/// What cutting a range out of the mappings changed.
#[derive(Debug, Default)]
pub struct Cut {
    /// The mappings the range overlapped, whole, as they were.
    pub before: Vec<Region>,
    /// Their parts outside the range: still mapped.
    pub kept: Vec<Region>,
    /// Their parts inside it: unmapped.
    pub removed: Vec<Region>,
}

#[derive(Default)]
pub struct Regions {
    by_start: BTreeMap<u64, Region>,
}

impl Regions {
    pub fn values(&self) -> impl Iterator<Item = &Region> {
        self.by_start.values()
    }

    /// Each mapping with its start.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Region)> {
        self.by_start.iter().map(|(s, r)| (*s, r))
    }

    /// Adds a mapping at `start` (which overlaps none: `cut` its range first).
    pub fn insert(&mut self, start: u64, region: Region) {
        self.by_start.insert(start, region);
    }

    /// Removes `[start, end)`, keeping the parts of each mapping outside it.
    pub fn cut(&mut self, start: u64, end: u64) -> Cut {
        let overlapping: Vec<u64> = self
            .by_start
            .range(..end)
            .rev()
            .take_while(|(s, r)| *s + r.alloc.size > start)
            .map(|(s, _)| *s)
            .collect();
        let mut cut = Cut::default();
        for s in overlapping {
            let Some(r) = self.by_start.remove(&s) else {
                continue;
            };
            let e = s + r.alloc.size;
            let part = |from: u64, to: u64| Region {
                alloc: Allocation {
                    size: to - from,
                    ..r.alloc
                },
                ..r
            };
            for (keep_start, keep_end) in [(s, start.max(s)), (end.min(e), e)] {
                if keep_end > keep_start {
                    let kept = part(keep_start, keep_end);
                    self.by_start.insert(keep_start, kept);
                    cut.kept.push(kept);
                }
            }
            cut.removed.push(part(start.max(s), end.min(e)));
            cut.before.push(r);
        }
        cut
    }
}
