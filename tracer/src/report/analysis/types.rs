//! Live objects by type, from the walks a capture holds: each process's
//! last walk (the one at its leak set, if it had one), the growth per type
//! since its first walk, and the types of each leaking stack.

use std::collections::HashMap;

use crate::{
    census::{self, Census, Moment, TypeCount},
    event::{Pid, StackId},
    report::{ProcessTypes, TypesGrowth},
};

/// The types of the leak set's allocations, per (process, stack).
pub type LeakTypes = HashMap<(Pid, StackId), Vec<TypeCount>>;

/// Each process's walks, in the order they were made.
fn by_process(censuses: &[Census]) -> HashMap<Pid, Vec<&Census>> {
    let mut out: HashMap<Pid, Vec<&Census>> = HashMap::new();
    for c in censuses {
        out.entry(c.pid).or_default().push(c);
    }
    for walks in out.values_mut() {
        walks.sort_by_key(|c| c.ts_ns);
    }
    out
}

/// The walk that stands for a process: at its leak set if it has one, else
/// its last.
fn latest<'a>(walks: &[&'a Census]) -> Option<&'a Census> {
    walks
        .iter()
        .rev()
        .find(|c| matches!(c.moment, Moment::Finalize | Moment::End))
        .or(walks.last())
        .copied()
}

/// `start_ns`: when recording began.
pub fn process_types(censuses: &[Census], start_ns: u64) -> Vec<ProcessTypes> {
    let since = |ts: u64| ts.saturating_sub(start_ns) as f64 / 1e9;
    let mut out: Vec<ProcessTypes> = by_process(censuses)
        .into_iter()
        .filter_map(|(pid, walks)| {
            let last = latest(&walks)?;
            let first = walks.first().copied().filter(|f| f.ts_ns < last.ts_ns);
            Some(ProcessTypes {
                pid,
                moment: last.moment,
                at_s: since(last.ts_ns),
                types: last.types.clone(),
                coverage: last.coverage.clone(),
                notes: last.notes.clone(),
                growth: first.map(|f| TypesGrowth {
                    since_s: since(f.ts_ns),
                    types: census::growth(&f.types, &last.types),
                }),
            })
        })
        .collect();
    out.sort_by_key(|t| t.pid);
    out
}

/// The types of each leaking stack, from each process's walk at its leak
/// set.
pub fn leak_types(censuses: &[Census]) -> LeakTypes {
    let mut out = LeakTypes::new();
    for (pid, walks) in by_process(censuses) {
        if let Some(last) = latest(&walks) {
            for s in &last.by_stack {
                out.insert((pid, s.stack), s.types.clone());
            }
        }
    }
    out
}

/// The types of several stacks merged into one entry, most bytes first.
pub fn merged<'a>(lists: impl IntoIterator<Item = &'a Vec<TypeCount>>) -> Vec<TypeCount> {
    let mut tally = HashMap::new();
    for list in lists {
        for t in list {
            census::tally(&mut tally, &t.name, t.count, t.bytes);
        }
    }
    census::sorted(tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::census::{Coverage, StackTypes};

    fn walk(pid: Pid, ts_ns: u64, moment: Moment, types: &[(&str, u64)]) -> Census {
        Census {
            pid,
            ts_ns,
            moment,
            types: types
                .iter()
                .map(|&(name, count)| TypeCount {
                    name: name.into(),
                    count,
                    bytes: count * 100,
                })
                .collect(),
            by_stack: vec![StackTypes {
                stack: StackId(7),
                types: vec![TypeCount {
                    name: "bytes".into(),
                    count: 3,
                    bytes: 6000,
                }],
            }],
            coverage: Coverage::default(),
            notes: vec![],
        }
    }

    #[test]
    fn last_walk_with_growth_since_the_first() {
        let walks = [
            walk(
                1,
                2_000_000_000,
                Moment::End,
                &[("dict", 10), ("Session", 900)],
            ),
            walk(
                1,
                1_000_000_000,
                Moment::Start,
                &[("dict", 10), ("Session", 100)],
            ),
            walk(2, 1_500_000_000, Moment::Start, &[("list", 5)]),
        ];
        let t = process_types(&walks, 500_000_000);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].pid, t[0].moment, t[0].at_s), (1, Moment::End, 1.5));
        let g = t[0].growth.as_ref().expect("two walks");
        assert_eq!(g.since_s, 0.5);
        assert_eq!(g.types[0].name, "Session");
        assert_eq!(g.types[0].count, 800);
        assert!(t[1].growth.is_none());
        let leaks = leak_types(&walks);
        assert_eq!(leaks[&(1, StackId(7))][0].count, 3);
        let m = merged([&leaks[&(1, StackId(7))], &leaks[&(2, StackId(7))]]);
        assert_eq!((m[0].count, m[0].bytes), (6, 12000));
    }
}
