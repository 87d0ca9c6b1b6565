//! A `Report` in each format a person or a tool reads: one module per
//! format, each with the same signature, and one dispatcher that
//! `tracer record` and `tracer report` share.

pub mod flamegraph;
pub mod folded;
pub mod html;
pub mod json;
pub mod lines;
pub mod numbers;
pub mod pprof;
pub mod speedscope;
pub mod text;
pub mod types;

use std::io;

use super::{Entry, Report};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Text tables of `Options::sections`, per process.
    Text,
    /// report.json, every section (docs/report-json.md).
    Json,
    /// Collapsed stacks of `Options::of`.
    Folded,
    /// An interactive SVG of `Options::of`.
    Flamegraph,
    /// gzipped profile.proto with alloc_* and inuse_* sample types.
    Pprof,
    /// speedscope's JSON of `Options::of`.
    Speedscope,
    /// One self-contained page with all of it.
    Html,
}

/// A part of a report, shown per process in text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Leaks,
    Hotspots,
    Peak,
    Temporary,
    Summary,
    /// Live objects by type.
    Types,
    /// The top leaking function, line by line.
    Lines,
    /// Stacks ranked by growth over the last windows.
    Growth,
}

/// Which entries a flamegraph, speedscope profile or folded file weighs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Of {
    Leaks,
    Hotspots,
    Peak,
}

impl Of {
    pub fn entries(self, report: &Report) -> &[Entry] {
        match self {
            Of::Leaks => &report.leaks,
            Of::Hotspots => &report.hotspots,
            Of::Peak => &report.history.peak,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Of::Leaks => "leaks (live bytes)",
            Of::Hotspots => "hotspots (allocated bytes)",
            Of::Peak => "live at the peak (bytes)",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Entries per list and process.
    pub top: usize,
    pub of: Of,
    pub sections: Vec<Section>,
}

/// What `tracer record` prints (types only for processes walked).
pub const RECORD_SECTIONS: [Section; 3] = [Section::Leaks, Section::Hotspots, Section::Types];

pub fn render(report: &Report, format: Format, options: &Options) -> io::Result<Vec<u8>> {
    let render = match format {
        Format::Text => text::render,
        Format::Json => json::render,
        Format::Folded => folded::render,
        Format::Flamegraph => flamegraph::render,
        Format::Pprof => pprof::render,
        Format::Speedscope => speedscope::render,
        Format::Html => html::render,
    };
    render(report, options)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        counters::Counters,
        process::ProcessInfo,
        report::{History, ProcessReport, Totals},
    };

    /// A report of one process running `command` that leaks `leaks`.
    pub fn report_of(leaks: &[Entry], command: &str) -> Report {
        let pid = leaks.first().map_or(1, |e| e.pid);
        Report {
            duration_s: 1.0,
            probes: String::new(),
            processes: vec![ProcessReport {
                info: ProcessInfo {
                    pid,
                    command: command.into(),
                    ..ProcessInfo::default()
                },
                leaks_taken: None,
                ..ProcessReport::default()
            }],
            totals: Totals::default(),
            counters: Counters::default(),
            min_age_s: 0.0,
            thread_stacks_included: false,
            leaks: leaks.to_vec(),
            hotspots: vec![],
            summary: vec![],
            history: History::default(),
            types: vec![],
            lines: vec![],
        }
    }

    pub fn options() -> Options {
        Options {
            top: 10,
            of: Of::Leaks,
            sections: RECORD_SECTIONS.to_vec(),
        }
    }

    #[test]
    fn every_format_renders_an_empty_report() {
        let report = report_of(&[], "cmd");
        for format in [
            Format::Text,
            Format::Json,
            Format::Folded,
            Format::Flamegraph,
            Format::Pprof,
            Format::Speedscope,
            Format::Html,
        ] {
            assert!(render(&report, format, &options()).is_ok(), "{format:?}");
        }
    }
}
