//! What `tracer top` shows, as plain values: the data the recording sends
//! at each refresh, the viewer's choices (keys), and the screen they make
//! (header, one table, a detail pane, a footer), which the terminal view
//! draws and `--once` prints. Pure, unit-tested.

use std::collections::{HashMap, VecDeque};

use super::growth::{GrowthAnalysis, Mark};
use crate::{
    census::{Census, TypeGrowth},
    event::{Pid, StackId, Tid},
    model::heap::Amount,
    report::render::numbers::{grouped, human_bytes},
};

/// The label of a native location not symbolized yet.
pub const SYMBOLIZING: &str = "[native, being symbolized]";

/// Refreshes of live bytes kept per location for its growth mark.
const HISTORY: usize = 10;

/// One process at one refresh.
#[derive(Clone, Debug, Default)]
pub struct ProcessData {
    pub pid: Pid,
    pub command: String,
    pub live_bytes: u64,
    pub rss_bytes: Option<u64>,
    /// Bytes allocated per second over the last interval.
    pub alloc_rate: f64,
    /// Its allocations and frees per second over the last interval.
    pub events_rate: f64,
    pub cells: Vec<Cell>,
}

/// What one thread's allocations from one stack come to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    pub tid: Tid,
    pub stack: StackId,
    pub live: Amount,
    /// Allocations made, since tracing began.
    pub allocations: u64,
    /// Bytes allocated in the last interval.
    pub last_bytes: u64,
}

/// A frame as `tracer top` names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loc {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The module's file name, for native frames without a file.
    pub module: String,
}

impl Loc {
    fn label(&self) -> String {
        let file = self
            .file
            .as_deref()
            .map(|f| f.rsplit('/').next().unwrap_or(f));
        match (file, self.line) {
            (Some(file), Some(line)) => format!("{}  {file}:{line}", self.function),
            _ if self.module.is_empty() => self.function.clone(),
            _ => format!("{}  [{}]", self.function, self.module),
        }
    }
}

/// A stack's frames: Python ones at once, native ones once symbolized
/// (the allocation function first).
#[derive(Clone, Debug, Default)]
pub struct StackInfo {
    pub python: Vec<Loc>,
    pub native: Option<Vec<Loc>>,
}

/// What the recording sends at each refresh.
#[derive(Clone, Debug, Default)]
pub struct Update {
    pub processes: Vec<ProcessData>,
    /// Stacks seen for the first time.
    pub stacks: Vec<(StackId, StackInfo)>,
    /// Lost events so far (all processes).
    pub lost_events: u64,
    /// `--sample-bytes`, if on.
    pub sampling: Option<u64>,
    pub interval_s: f64,
}

/// Which frame a row stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The innermost Python frame (native where there is none).
    Python,
    /// The allocation function's caller.
    Native,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    Live,
    Allocated,
    Count,
    Growth,
}

/// The viewer's choices.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub process: usize,
    pub thread: Option<Tid>,
    pub mode: Mode,
    pub sort: Sort,
    pub paused: bool,
    pub cursor: usize,
    pub expanded: bool,
    pub help: bool,
    /// Live objects by type instead of locations.
    pub objects: bool,
}

impl Default for State {
    fn default() -> Self {
        Self {
            process: 0,
            thread: None,
            mode: Mode::Python,
            sort: Sort::Live,
            paused: false,
            cursor: 0,
            expanded: false,
            help: false,
            objects: false,
        }
    }
}

/// The walks of one process's heap seen so far.
#[derive(Clone, Debug)]
pub struct Walked {
    pub first: Census,
    pub last: Census,
    pub growth: Vec<TypeGrowth>,
}

/// Everything the view keeps between refreshes.
#[derive(Default)]
pub struct Data {
    pub processes: Vec<ProcessData>,
    pub stacks: HashMap<StackId, StackInfo>,
    pub lost_events: u64,
    pub sampling: Option<u64>,
    pub interval_s: f64,
    /// Live bytes per location (all threads) over the last refreshes.
    history: HashMap<(Pid, Mode, String), VecDeque<u64>>,
    pub walks: HashMap<Pid, Walked>,
}

/// One table row of locations.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub label: String,
    pub live: u64,
    pub live_pct: f64,
    pub allocations: u64,
    pub last_bytes: u64,
    pub growth: Option<Mark>,
    /// Its stack with the most live bytes, for the detail pane.
    pub top_stack: StackId,
}

impl Data {
    pub fn update(&mut self, u: Update) {
        // Native frames may have come before the stack's first refresh.
        for (id, info) in u.stacks {
            let known = self.stacks.entry(id).or_default();
            known.python = info.python;
            if info.native.is_some() {
                known.native = info.native;
            }
        }
        self.lost_events = u.lost_events;
        self.sampling = u.sampling;
        self.interval_s = u.interval_s;
        self.processes = u.processes;
        for p in &self.processes {
            for mode in [Mode::Python, Mode::Native] {
                for (key, amount) in by_location(&p.cells, &self.stacks, mode, None) {
                    let h = self.history.entry((p.pid, mode, key)).or_default();
                    h.push_back(amount.live);
                    if h.len() > HISTORY {
                        h.pop_front();
                    }
                }
            }
        }
    }

    /// A walk of a process's heap ended.
    pub fn walked(&mut self, census: Census) {
        let first = self
            .walks
            .remove(&census.pid)
            .map_or_else(|| census.clone(), |w| w.first);
        let growth = crate::census::growth(&first.types, &census.types);
        self.walks.insert(
            census.pid,
            Walked {
                first,
                last: census,
                growth,
            },
        );
    }

    pub fn process(&self, state: &State) -> Option<&ProcessData> {
        self.processes
            .get(state.process.min(self.processes.len().saturating_sub(1)))
    }

    /// The threads of the process shown, in order.
    pub fn threads(&self, state: &State) -> Vec<Tid> {
        let mut tids: Vec<Tid> = self
            .process(state)
            .map(|p| p.cells.iter().map(|c| c.tid).collect())
            .unwrap_or_default();
        tids.sort_unstable();
        tids.dedup();
        tids
    }

    /// The rows of the process shown, sorted as chosen.
    pub fn rows(&self, state: &State, growth: &dyn GrowthAnalysis) -> Vec<Row> {
        let Some(p) = self.process(state) else {
            return Vec::new();
        };
        let groups = by_location(&p.cells, &self.stacks, state.mode, state.thread);
        let total: u64 = groups.values().map(|g| g.live).sum();
        let mut rows: Vec<Row> = groups
            .into_iter()
            .map(|(key, g)| {
                let history = self.history.get(&(p.pid, state.mode, key.clone()));
                let mark = match (state.thread, history) {
                    (None, Some(h)) => {
                        growth.mark(&h.iter().copied().collect::<Vec<_>>(), self.interval_s)
                    }
                    _ => None,
                };
                Row {
                    label: g.label,
                    live: g.live,
                    live_pct: if total > 0 {
                        g.live as f64 * 100.0 / total as f64
                    } else {
                        0.0
                    },
                    allocations: g.allocations,
                    last_bytes: g.last_bytes,
                    growth: mark,
                    top_stack: g.top_stack,
                }
            })
            .collect();
        let rate = |r: &Row| r.growth.map_or(0.0, |m| m.rate);
        rows.sort_by(|a, b| {
            let order = match state.sort {
                Sort::Live => b.live.cmp(&a.live),
                Sort::Allocated => b.last_bytes.cmp(&a.last_bytes),
                Sort::Count => b.allocations.cmp(&a.allocations),
                Sort::Growth => rate(b).total_cmp(&rate(a)),
            };
            order.then(b.live.cmp(&a.live)).then(a.label.cmp(&b.label))
        });
        rows
    }
}

/// A location's amounts while grouping.
#[derive(Default)]
struct Group {
    label: String,
    live: u64,
    allocations: u64,
    last_bytes: u64,
    top_stack: StackId,
    top_live: u64,
}

/// The frame a stack stands for in `mode`: its key and its label.
fn location(info: Option<&StackInfo>, mode: Mode) -> (String, String) {
    let native = info.and_then(|i| i.native.as_ref());
    let caller = native.and_then(|n| n.get(1).or(n.first()));
    let python = info.and_then(|i| i.python.first());
    let named = |l: &Loc| (format!("{l:?}"), l.label());
    match (mode, python, caller) {
        (Mode::Python, Some(py), _) => named(py),
        (_, _, Some(n)) => {
            let (key, label) = named(n);
            match mode {
                Mode::Python => (key, format!("[native] {label}")),
                Mode::Native => (key, label),
            }
        }
        // Not symbolized yet.
        (_, _, None) => ("?".into(), SYMBOLIZING.into()),
    }
}

fn by_location(
    cells: &[Cell],
    stacks: &HashMap<StackId, StackInfo>,
    mode: Mode,
    thread: Option<Tid>,
) -> HashMap<String, Group> {
    let mut out: HashMap<String, Group> = HashMap::new();
    for c in cells.iter().filter(|c| thread.is_none_or(|t| c.tid == t)) {
        let (key, label) = location(stacks.get(&c.stack), mode);
        let g = out.entry(key).or_insert_with(|| Group {
            label,
            top_stack: c.stack,
            ..Group::default()
        });
        g.live += c.live.bytes;
        g.allocations += c.allocations;
        g.last_bytes += c.last_bytes;
        if c.live.bytes > g.top_live {
            g.top_live = c.live.bytes;
            g.top_stack = c.stack;
        }
    }
    out
}

/// What is drawn: a header, one table, a detail pane, a footer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Screen {
    pub header: Vec<String>,
    pub columns: Vec<String>,
    /// Widths of all columns but the last, which takes the rest.
    pub widths: Vec<u16>,
    pub rows: Vec<Vec<String>>,
    pub cursor: Option<usize>,
    pub detail: Vec<String>,
    pub footer: String,
}

const FOOTER: &str = "q quit  ? help  l/a/c/g sort  n native  t thread  p process  enter stack  space pause  o objects";

const HELP: [&str; 11] = [
    "l  sort by live bytes          a  sort by bytes allocated in the last interval",
    "c  sort by allocations         g  sort by growth (live bytes rising, per second)",
    "n  Python frames / native frames (the allocation function's caller)",
    "t  next thread (all threads, then each)    p / P  next / previous process",
    "up / down  choose a row        enter  its whole stack (again: close)",
    "space  pause (recording goes on)          o  live objects by type (heap walks)",
    "q, Esc, Ctrl-C  quit (probes removed)    ?  this help",
    "LIVE: live bytes now; %: of the process's live; ALLOCS: allocations made;",
    "LAST: bytes allocated in the last interval; GROWTH: live bytes rising steadily",
    "(over the last refreshes), with the rate.",
    "sampled 1/N: one allocation recorded per N bytes; the numbers are estimates.",
];

/// The screen for `state`, with at most `rows` table rows.
pub fn screen(data: &Data, state: &State, growth: &dyn GrowthAnalysis, rows: usize) -> Screen {
    let mut s = Screen {
        footer: FOOTER.to_owned(),
        ..Screen::default()
    };
    let Some(p) = data.process(state) else {
        s.header
            .push("tracer top: waiting for a traced process".to_owned());
        return s;
    };
    let n = data.processes.len();
    s.header.push(format!(
        "tracer top  pid {} ({}/{n})  {}",
        p.pid,
        state.process.min(n - 1) + 1,
        p.command
    ));
    // Each line fits 80 columns with typical numbers: the lost events and
    // the sampling go with the view's settings, not with the totals.
    s.header.push(format!(
        "live heap {}  rss {}  alloc {}/s  events {}/s",
        human_bytes(p.live_bytes),
        p.rss_bytes.map_or_else(|| "-".to_owned(), human_bytes),
        human_bytes(p.alloc_rate as u64),
        grouped(p.events_rate as u64),
    ));
    s.header.push(format!(
        "view: {}  sort: {}  thread: {}  lost events {}{}{}",
        if state.objects {
            "objects by type"
        } else {
            match state.mode {
                Mode::Python => "python",
                Mode::Native => "native",
            }
        },
        match state.sort {
            Sort::Live => "live",
            Sort::Allocated => "allocated",
            Sort::Count => "count",
            Sort::Growth => "growth",
        },
        state
            .thread
            .map_or_else(|| "all".to_owned(), |t| t.to_string()),
        grouped(data.lost_events),
        data.sampling.map_or_else(String::new, |n| format!(
            // Said in full in the help: "(estimates)" would not fit 80
            // columns.
            "  sampled 1/{}",
            human_bytes(n)
        )),
        if state.paused { "  [PAUSED]" } else { "" }
    ));
    if state.help {
        s.detail = HELP.iter().map(|l| (*l).to_owned()).collect();
    }
    if state.objects {
        objects(&mut s, data, p.pid, rows);
        return s;
    }
    s.columns = ["LIVE", "%", "ALLOCS", "LAST", "GROWTH", "LOCATION"]
        .map(str::to_owned)
        .to_vec();
    s.widths = vec![10, 5, 9, 10, 13];
    let all = data.rows(state, growth);
    let cursor = state.cursor.min(all.len().saturating_sub(1));
    let first = cursor.saturating_sub(rows.saturating_sub(1));
    for r in all.iter().skip(first).take(rows) {
        s.rows.push(vec![
            human_bytes(r.live),
            format!("{:.1}", r.live_pct),
            grouped(r.allocations),
            human_bytes(r.last_bytes),
            r.growth.map_or_else(String::new, |m| {
                format!("+{}/s", human_bytes(m.rate as u64))
            }),
            r.label.clone(),
        ]);
    }
    if !all.is_empty() {
        s.cursor = Some(cursor - first);
    }
    if state.expanded
        && !state.help
        && let Some(r) = all.get(cursor)
    {
        s.detail = stack_lines(data.stacks.get(&r.top_stack));
    }
    s
}

/// The whole stack of a row: Python frames, then native ones.
fn stack_lines(info: Option<&StackInfo>) -> Vec<String> {
    let Some(info) = info else {
        return vec!["(stack not known yet)".into()];
    };
    let mut out: Vec<String> = info
        .python
        .iter()
        .map(|l| format!("py  {}", l.label()))
        .collect();
    match &info.native {
        Some(native) => out.extend(native.iter().map(|l| format!("    {}", l.label()))),
        None => out.push("    (native frames being symbolized)".into()),
    }
    out
}

/// The table of live objects by type of `pid`, with growth since its
/// first walk.
fn objects(s: &mut Screen, data: &Data, pid: Pid, rows: usize) {
    s.columns = ["COUNT", "BYTES", "+COUNT", "+BYTES", "TYPE"]
        .map(str::to_owned)
        .to_vec();
    s.widths = vec![11, 11, 10, 11];
    let Some(w) = data.walks.get(&pid) else {
        s.detail
            .push("walking the heap (every few seconds while this view is open)".into());
        return;
    };
    let grown: HashMap<&str, &TypeGrowth> = w.growth.iter().map(|g| (g.name.as_str(), g)).collect();
    let since = w.last.ts_ns.saturating_sub(w.first.ts_ns) as f64 / 1e9;
    s.header.push(format!(
        "heap walk: {} objects examined in {:.1} ms; growth over {since:.1} s",
        grouped(
            w.last.coverage.arena_blocks
                + w.last.coverage.gc_objects
                + w.last.coverage.traced_objects
        ),
        w.last.coverage.micros as f64 / 1e3
    ));
    let mut types: Vec<_> = w.last.types.iter().collect();
    // The growing types first, then by bytes.
    types.sort_by_key(|t| {
        let g = grown.get(t.name.as_str()).map_or(0, |g| g.bytes);
        (std::cmp::Reverse(g), std::cmp::Reverse(t.bytes))
    });
    for t in types.into_iter().take(rows) {
        let g = grown.get(t.name.as_str());
        s.rows.push(vec![
            grouped(t.count),
            human_bytes(t.bytes),
            g.map_or_else(String::new, |g| {
                format!(
                    "{}{}",
                    if g.count < 0 { "-" } else { "+" },
                    grouped(g.count.unsigned_abs())
                )
            }),
            g.map_or_else(String::new, |g| {
                format!(
                    "{}{}",
                    if g.bytes < 0 { "-" } else { "+" },
                    human_bytes(g.bytes.unsigned_abs())
                )
            }),
            t.name.clone(),
        ]);
    }
}

/// The screen as text (`--once`): header, columns and rows.
pub fn text(s: &Screen) -> String {
    let mut out = String::new();
    for h in &s.header {
        out.push_str(h);
        out.push('\n');
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            match s.widths.get(i) {
                Some(&w) => l.push_str(&format!("{c:>w$} ", w = w as usize)),
                None => l.push_str(c),
            }
        }
        l.trim_end().to_owned() + "\n"
    };
    if !s.columns.is_empty() {
        out.push_str(&line(&s.columns));
    }
    for r in &s.rows {
        out.push_str(&line(r));
    }
    for d in &s.detail {
        out.push_str(d);
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
