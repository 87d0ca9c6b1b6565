//! Live Python objects by type: what one walk of a process's heap found
//! (`python::heap` makes it), as the capture keeps it and the reports and
//! `tracer top` show it; and the growth between two walks (pympler's
//! tracker diff).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::event::{Pid, StackId};

/// Objects of one type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCount {
    /// The type's `tp_name` ("dict", "Session", "numpy.ndarray").
    #[serde(rename = "type")]
    pub name: String,
    pub count: u64,
    /// The blocks they occupy (the allocation's size where tracer traced
    /// it, the size class in CPython's arenas, else the object's own size).
    pub bytes: u64,
}

impl TypeCount {
    pub fn new(name: &str, count: u64, bytes: u64) -> Self {
        Self {
            name: name.to_owned(),
            count,
            bytes,
        }
    }
}

/// When a walk was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Moment {
    /// When tracing began (`--pid`, `--all`): the baseline for growth.
    Start,
    /// At `Py_FinalizeEx`, the process held there until the walk ended.
    Finalize,
    /// At the end of the recording, the process still running.
    End,
    /// A walk made periodically: `tracer top`'s types view, the
    /// daemon's `--types-every`.
    Periodic,
}

/// How much of the heap a walk saw, and what it cost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Used blocks of CPython's small-object arenas, examined.
    pub arena_blocks: u64,
    /// Bytes of arenas read.
    pub arena_bytes: u64,
    /// Objects on the GC's generation lists outside the arenas.
    pub gc_objects: u64,
    /// Live allocations tracer traced, outside the arenas and the GC lists,
    /// whose type was read.
    pub traced_objects: u64,
    /// Blocks examined that held no Python object (buffers, tables).
    pub not_objects: u64,
    /// Reads of the process's memory (`process_vm_readv` calls).
    pub reads: u64,
    /// Wall time of the walk.
    pub micros: u64,
    /// How long the process was held stopped for it (`Moment::Finalize`).
    pub held_micros: u64,
    /// A cap or the time limit was reached: the counts past it are
    /// extrapolated from what was examined.
    pub estimated: bool,
}

/// The types of one stack's live allocations (the leak set's), most bytes
/// first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackTypes {
    pub stack: StackId,
    pub types: Vec<TypeCount>,
}

/// One walk of one process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Census {
    pub pid: Pid,
    /// CLOCK_MONOTONIC ns when it began.
    pub ts_ns: u64,
    pub moment: Moment,
    /// Every type found, most bytes first.
    pub types: Vec<TypeCount>,
    /// The types of the traced live allocations, per stack.
    pub by_stack: Vec<StackTypes>,
    pub coverage: Coverage,
    /// What could not be walked, and why.
    pub notes: Vec<String>,
}

/// How one type changed between two walks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TypeGrowth {
    #[serde(rename = "type")]
    pub name: String,
    pub count: i64,
    pub bytes: i64,
    /// Count and bytes at the later walk.
    pub now_count: u64,
    pub now_bytes: u64,
}

/// Per type, `later` minus `earlier`, the most grown bytes first; types
/// that did not change are left out.
pub fn growth(earlier: &[TypeCount], later: &[TypeCount]) -> Vec<TypeGrowth> {
    let before: HashMap<&str, &TypeCount> = earlier.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut out: Vec<TypeGrowth> = later
        .iter()
        .map(|t| {
            let (count, bytes) = before
                .get(t.name.as_str())
                .map_or((0, 0), |b| (b.count, b.bytes));
            TypeGrowth {
                name: t.name.clone(),
                count: t.count as i64 - count as i64,
                bytes: t.bytes as i64 - bytes as i64,
                now_count: t.count,
                now_bytes: t.bytes,
            }
        })
        .collect();
    let now: std::collections::HashSet<&str> = later.iter().map(|t| t.name.as_str()).collect();
    out.extend(
        earlier
            .iter()
            .filter(|t| !now.contains(t.name.as_str()))
            .map(|t| TypeGrowth {
                name: t.name.clone(),
                count: -(t.count as i64),
                bytes: -(t.bytes as i64),
                now_count: 0,
                now_bytes: 0,
            }),
    );
    out.retain(|g| g.count != 0 || g.bytes != 0);
    out.sort_by(|a, b| (b.bytes, b.count, &a.name).cmp(&(a.bytes, a.count, &b.name)));
    out
}

/// Adds `count` objects of `bytes` to the type `name` of a tally.
pub fn tally(types: &mut HashMap<String, TypeCount>, name: &str, count: u64, bytes: u64) {
    let t = types.entry(name.to_owned()).or_insert_with(|| TypeCount {
        name: name.to_owned(),
        ..TypeCount::default()
    });
    t.count += count;
    t.bytes += bytes;
}

/// A tally as a list, most bytes first.
pub fn sorted(types: HashMap<String, TypeCount>) -> Vec<TypeCount> {
    let mut out: Vec<TypeCount> = types.into_values().collect();
    out.sort_by(|a, b| (b.bytes, b.count, &a.name).cmp(&(a.bytes, a.count, &b.name)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, count: u64, bytes: u64) -> TypeCount {
        TypeCount::new(name, count, bytes)
    }

    #[test]
    fn growth_puts_the_growing_type_first() {
        let earlier = [t("dict", 100, 6400), t("str", 50, 3000), t("gone", 2, 64)];
        let later = [
            t("dict", 110, 7040),
            t("Session", 1000, 64000),
            t("str", 50, 3000),
        ];
        let g = growth(&earlier, &later);
        let names: Vec<&str> = g.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["Session", "dict", "gone"]);
        assert_eq!((g[0].count, g[0].bytes), (1000, 64000));
        assert_eq!((g[2].count, g[2].bytes, g[2].now_count), (-2, -64, 0));
    }

    #[test]
    fn tallies_sort_by_bytes() {
        let mut types = HashMap::new();
        tally(&mut types, "a", 1, 10);
        tally(&mut types, "b", 1, 30);
        tally(&mut types, "a", 2, 30);
        let s = sorted(types);
        assert_eq!(s, [t("a", 3, 40), t("b", 1, 30)]);
    }
}
