//! One Python function (or file) line by line, like memory_profiler's
//! table: for each line, what was allocated while the function ran it
//! (its callees included, each allocation counted once per line however
//! deep the recursion), what the line allocated itself (the function was
//! the innermost Python frame), and what of it was still live when the
//! leak set was taken. The source text is added later (`report::source`).

use std::collections::{BTreeMap, HashMap};

use super::{Group, Options, hotspots, leaks};
use crate::{
    capture::Contents,
    event::{Pid, StackId},
    frame::{Frame, FrameKind, StackDef},
    model::heap::HeapModel,
    report::{FunctionLines, LineAmounts},
    sampling::Sampling,
};

/// Which frames a table is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// A function name, qualified ("Session.__init__") or not ("__init__").
    pub function: Option<String>,
    /// A file path, or its ending ("app/models.py").
    pub file: Option<String>,
}

impl Selector {
    fn matches(&self, f: &Frame) -> bool {
        if f.kind != FrameKind::Python {
            return false;
        }
        let name_ok = self
            .function
            .as_deref()
            .is_none_or(|want| f.function == want || f.function.rsplit('.').next() == Some(want));
        let file_ok = self.file.as_deref().is_none_or(|want| {
            f.file
                .as_deref()
                .is_some_and(|have| path_ends_with(have, want))
        });
        name_ok && file_ok
    }
}

/// `have` is `want`, or ends with it at a path component boundary.
fn path_ends_with(have: &str, want: &str) -> bool {
    have == want
        || have
            .strip_suffix(want)
            .is_some_and(|rest| rest.ends_with('/') || want.starts_with('/'))
}

/// A function (or with `Selector::function` unset, a file) of one process.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    pid: Pid,
    function: String,
    file: String,
}

#[derive(Default)]
struct Table {
    allocated_bytes: u64,
    lines: BTreeMap<u32, LineAmounts>,
}

/// Allocated and live amounts of `groups`, by stack: what each line gets.
#[derive(Clone, Copy)]
enum Kind {
    Allocated,
    Live,
}

fn add(
    tables: &mut HashMap<Key, Table>,
    selector: &Selector,
    g: &Group,
    def: &StackDef,
    kind: Kind,
) {
    let whole_file = selector.function.is_none();
    let mut seen: Vec<(Key, u32)> = Vec::new();
    for (depth, f) in def.python.iter().enumerate() {
        let (Some(file), Some(line)) = (&f.file, f.line) else {
            continue;
        };
        if !selector.matches(f) {
            continue;
        }
        let key = Key {
            pid: g.pid,
            function: if whole_file {
                String::new()
            } else {
                f.function.clone()
            },
            file: file.clone(),
        };
        // Recursion: a line counts an allocation once.
        if seen.iter().any(|(k, l)| *k == key && *l == line) {
            continue;
        }
        seen.push((key.clone(), line));
        let table = tables.entry(key).or_default();
        let row = table.lines.entry(line).or_insert_with(|| LineAmounts {
            line,
            ..LineAmounts::default()
        });
        let own = depth == 0;
        let a = g.amount;
        match kind {
            Kind::Allocated => {
                row.allocations += a.count;
                row.allocated_bytes += a.bytes;
                if own {
                    row.own_allocations += a.count;
                    row.own_allocated_bytes += a.bytes;
                }
                table.allocated_bytes += a.bytes;
            }
            Kind::Live => {
                row.live_bytes += a.bytes;
                if own {
                    row.own_live_bytes += a.bytes;
                }
            }
        }
    }
}

/// The table of the function (or file) `selector` names, in the process
/// where it allocated most; `None` if no frame matches. `sampled` says
/// whether a process's amounts are estimates.
pub fn lines<'a>(
    allocated: &[Group],
    live: &[Group],
    stack_of: impl Fn(StackId) -> Option<&'a StackDef>,
    selector: &Selector,
    sampled: impl Fn(Pid) -> bool,
) -> Option<FunctionLines> {
    let mut tables: HashMap<Key, Table> = HashMap::new();
    for (groups, kind) in [(allocated, Kind::Allocated), (live, Kind::Live)] {
        for g in groups {
            if let Some(def) = stack_of(g.stack) {
                add(&mut tables, selector, g, def, kind);
            }
        }
    }
    let mut keys: Vec<(&Key, u64)> = tables.iter().map(|(k, t)| (k, t.allocated_bytes)).collect();
    keys.sort_by(|a, b| (b.1, a.0).cmp(&(a.1, b.0)));
    let (best, _) = *keys.first()?;
    let others = keys[1..]
        .iter()
        .filter(|(k, _)| k.function != best.function || k.file != best.file)
        .map(|(k, _)| format!("{} ({})", k.function, k.file))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let best = best.clone();
    let table = tables.remove(&best)?;
    Some(FunctionLines {
        pid: best.pid,
        function: best.function,
        file: best.file,
        estimated: sampled(best.pid),
        source_found: false,
        lines: table.lines.into_values().collect(),
        others,
    })
}

/// The name of the Python function that leaked most in `pid`: the
/// innermost Python frame of its largest leaking stacks, summed.
pub fn top_leaking_function<'a>(
    live: &[Group],
    pid: Pid,
    stack_of: impl Fn(StackId) -> Option<&'a StackDef>,
) -> Option<Selector> {
    let mut bytes: HashMap<(&str, &str), u64> = HashMap::new();
    for g in live.iter().filter(|g| g.pid == pid) {
        let Some(f) = stack_of(g.stack).and_then(|d| d.python.first()) else {
            continue;
        };
        if let Some(file) = &f.file {
            *bytes
                .entry((f.function.as_str(), file.as_str()))
                .or_default() += g.amount.bytes;
        }
    }
    let ((function, file), _) = bytes
        .into_iter()
        .max_by(|a, b| (a.1, b.0).cmp(&(b.1, a.0)))?;
    Some(Selector {
        function: Some(function.to_owned()),
        file: Some(file.to_owned()),
    })
}

/// Whether `pid`'s recording sampled its allocations.
fn sampled(contents: &Contents, pid: Pid) -> bool {
    contents
        .processes
        .get(&pid)
        .is_some_and(|p| p.notes.iter().any(|n| Sampling::is_note(n)))
}

/// Each process's top leaking Python function, line by line.
pub fn top_functions(
    contents: &Contents,
    allocated: &[Group],
    live: &[Group],
) -> Vec<FunctionLines> {
    let stack_of = |id| contents.stacks.get(&id);
    contents
        .processes
        .keys()
        .filter_map(|&pid| {
            let selector = top_leaking_function(live, pid, stack_of)?;
            let mine = |groups: &[Group]| -> Vec<Group> {
                groups.iter().filter(|g| g.pid == pid).copied().collect()
            };
            lines(&mine(allocated), &mine(live), stack_of, &selector, |pid| {
                sampled(contents, pid)
            })
        })
        .collect()
}

/// `selector`'s function (or file) line by line, from one pass over a
/// capture's events (`tracer report CAPTURE lines`).
pub fn function_lines(
    contents: &Contents,
    options: &Options,
    selector: &Selector,
) -> Option<FunctionLines> {
    let mut heap = HeapModel::default().including_thread_stacks(options.include_thread_stacks);
    contents.events.each(&mut |e| {
        heap.apply(e);
        true
    });
    let live = leaks(&heap, contents.end_ns, options.min_age_ns);
    lines(
        &hotspots(&heap),
        &live,
        |id| contents.stacks.get(&id),
        selector,
        |pid| sampled(contents, pid),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::heap::Amount;

    fn py(function: &str, line: u32) -> Frame {
        Frame {
            kind: FrameKind::Python,
            function: function.into(),
            module: "python3.11".into(),
            file: Some("/srv/app/work.py".into()),
            line: Some(line),
            offset: None,
            inlined: false,
            unknown: None,
        }
    }

    fn def(frames: Vec<Frame>) -> StackDef {
        StackDef {
            native: vec![],
            native_truncated: false,
            python: frames,
            python_truncated: false,
        }
    }

    fn group(stack: u32, bytes: u64, count: u64) -> Group {
        Group {
            pid: 1,
            stack: StackId(stack),
            amount: Amount { bytes, count },
        }
    }

    #[test]
    fn lines_with_callees_and_own() {
        let defs: HashMap<StackId, StackDef> = [
            // work() line 5 allocates itself.
            (StackId(1), def(vec![py("work", 5), py("main", 20)])),
            // work() line 6 calls helper(), which allocates.
            (
                StackId(2),
                def(vec![py("helper", 12), py("work", 6), py("main", 20)]),
            ),
            // Recursion: work line 7 -> work line 7 -> allocation at line 5.
            (
                StackId(3),
                def(vec![py("work", 5), py("work", 7), py("work", 7)]),
            ),
        ]
        .into();
        let selector = Selector {
            function: Some("work".into()),
            file: None,
        };
        let allocated = [group(1, 1000, 10), group(2, 500, 5), group(3, 30, 3)];
        let live = [group(1, 400, 4)];
        let t = lines(&allocated, &live, |s| defs.get(&s), &selector, |_| false).expect("found");
        assert_eq!(
            (t.function.as_str(), t.file.as_str()),
            ("work", "/srv/app/work.py")
        );
        let row = |line| t.lines.iter().find(|l| l.line == line).expect("line");
        assert_eq!(
            (
                row(5).allocated_bytes,
                row(5).own_allocated_bytes,
                row(5).allocations
            ),
            (1030, 1030, 13)
        );
        assert_eq!((row(5).live_bytes, row(5).own_live_bytes), (400, 400));
        assert_eq!(
            (row(6).allocated_bytes, row(6).own_allocated_bytes),
            (500, 0)
        );
        assert_eq!(row(7).allocated_bytes, 30, "counted once despite recursion");
        // The whole file: helper's line too.
        let file = Selector {
            function: None,
            file: Some("app/work.py".into()),
        };
        let t = lines(&allocated, &live, |s| defs.get(&s), &file, |_| true).expect("found");
        assert!(t.estimated);
        assert_eq!(
            t.lines.iter().map(|l| l.line).collect::<Vec<_>>(),
            [5, 6, 7, 12, 20]
        );
        assert!(!path_ends_with("/srv/app/work.py", "p/work.py"));
        let top = top_leaking_function(&live, 1, |s| defs.get(&s)).expect("a leak");
        assert_eq!(top.function.as_deref(), Some("work"));
    }
}
