//! speedscope's file format (https://www.speedscope.app/file-format-schema.json):
//! one sampled profile per process, weighted in bytes.

use std::{collections::HashMap, io};

use serde::Serialize;

use super::Options;
use crate::{frame::Frame, report::Report};

#[derive(Serialize)]
struct File<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    shared: Shared,
    profiles: Vec<Profile>,
    name: &'a str,
    #[serde(rename = "activeProfileIndex")]
    active_profile_index: usize,
    exporter: &'static str,
}

#[derive(Serialize)]
struct Shared {
    frames: Vec<SpeedscopeFrame>,
}

#[derive(Serialize, PartialEq, Eq, Hash, Clone)]
struct SpeedscopeFrame {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u32>,
}

#[derive(Serialize)]
struct Profile {
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    unit: &'static str,
    #[serde(rename = "startValue")]
    start_value: u64,
    #[serde(rename = "endValue")]
    end_value: u64,
    /// Stacks as frame indexes, outermost first.
    samples: Vec<Vec<usize>>,
    weights: Vec<u64>,
}

fn frame_of(f: &Frame) -> SpeedscopeFrame {
    let name = match &f.file {
        Some(_) => f.function.clone(),
        None => format!("{} [{}]", f.function, f.module_name()),
    };
    SpeedscopeFrame {
        name,
        file: f.file.clone(),
        line: f.line,
    }
}

/// The entries of `options.of` of every process, one profile each.
pub fn render(report: &Report, options: &Options) -> io::Result<Vec<u8>> {
    let entries = options.of.entries(report);
    let name = options.of.title();
    let mut frames: Vec<SpeedscopeFrame> = Vec::new();
    let mut index: HashMap<SpeedscopeFrame, usize> = HashMap::new();
    let mut profiles: Vec<Profile> = Vec::new();
    let mut pids: Vec<u32> = entries.iter().map(|e| e.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    for pid in pids {
        let mut samples = Vec::new();
        let mut weights = Vec::new();
        for e in entries.iter().filter(|e| e.pid == pid && e.bytes > 0) {
            let stack = e
                .stack
                .iter()
                .rev()
                .map(|f| {
                    let f = frame_of(f);
                    *index.entry(f.clone()).or_insert_with(|| {
                        frames.push(f);
                        frames.len() - 1
                    })
                })
                .collect();
            samples.push(stack);
            weights.push(e.bytes);
        }
        profiles.push(Profile {
            kind: "sampled",
            name: format!(
                "{name}: pid {} ({})",
                crate::event::pid_label(pid),
                report.command_name(pid)
            ),
            unit: "bytes",
            start_value: 0,
            end_value: weights.iter().sum(),
            samples,
            weights,
        });
    }
    serde_json::to_vec(&File {
        schema: "https://www.speedscope.app/file-format-schema.json",
        shared: Shared { frames },
        profiles,
        name,
        active_profile_index: 0,
        exporter: concat!("tracer ", env!("CARGO_PKG_VERSION")),
    })
    .map_err(io::Error::other)
}
