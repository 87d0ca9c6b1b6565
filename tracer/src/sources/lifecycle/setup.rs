//! Adopting a process: probing the files it maps, finding its CPython and
//! telling the kernel how to read its frames, and what the report should
//! say of what tracer sees of its allocations. Safe to repeat (after an
//! exec, as new libraries appear).

use anyhow::{Context as _, Result};
use log::{info, warn};

use crate::{
    event::Pid,
    model::Model,
    proc_maps::ProcessMaps,
    python::{self, DetectError},
    sources::{
        probes::{FileProbes, Probes},
        procfs,
    },
};

/// What probing a process found.
pub struct Setup {
    /// An allocator (libc) of the process is probed.
    pub allocator: bool,
    /// Whether it runs a CPython, or why it runs one tracer cannot read.
    pub python: Result<bool, DetectError>,
    /// What the report says of its allocators, when its interpreter was
    /// found just now.
    pub notes: Option<Vec<String>>,
}

/// The first half of adopting a process, cheap: reads its map, opens its
/// executable files for its stacks, and if it runs CPython tells the kernel
/// how to read its frames. Attaching probes to files tracer has not probed
/// yet takes milliseconds each (hundreds on a busy host): adopting several
/// processes at once does this half for all of them first, so that a
/// process on an already probed libc has its Python frames the soonest.
pub fn find_interpreter(pid: Pid, probes: &mut Probes, model: &mut Model) -> Result<Found> {
    let maps = ProcessMaps::read(pid)
        .with_context(|| format!("cannot read the memory map of pid {pid}"))?;
    model.refresh_maps(pid);
    let known = match model.interpreter(pid) {
        Some(_) => Ok(Known::Before),
        None => match python::detect(pid, &maps) {
            Ok(Some(interp)) => {
                probes.trace_python(pid, &interp.config)?;
                info!("pid {pid}: {}", describe(&interp.version, &interp.module));
                let warning = interp.layout.warning();
                if let Some(warning) = &warning {
                    warn!("pid {pid}: {warning}");
                }
                model.add_interpreter(pid, interp);
                Ok(Known::Now { warning })
            }
            Ok(None) => Ok(Known::No),
            Err(err) => Err(err),
        },
    };
    Ok(Found { maps, known })
}

/// The second half: probes the files the process maps that have none yet.
/// `started_ns`, when the process exec'd if tracer saw it, tells whether an
/// allocator was probed only after it started.
pub fn probe_files(
    pid: Pid,
    found: Found,
    probes: &mut Probes,
    started_ns: Option<u64>,
) -> Result<Setup> {
    let probed = probes.attach_process(pid, &found.maps)?;
    let allocator = probed.iter().any(FileProbes::is_allocator);
    let notes = match &found.known {
        Ok(Known::Now { warning }) => {
            let mut notes = allocator_notes(pid, &probed, probes.pymalloc());
            notes.extend(probes.sampling().map(|s| s.note()));
            notes.extend(warning.clone());
            notes.extend(late_probes(&probed, started_ns));
            Some(notes)
        }
        _ => None,
    };
    Ok(Setup {
        allocator,
        python: found.known.map(|k| k != Known::No),
        notes,
    })
}

/// Both halves.
pub fn setup(pid: Pid, probes: &mut Probes, model: &mut Model) -> Result<Setup> {
    let found = find_interpreter(pid, probes, model)?;
    probe_files(pid, found, probes, None)
}

/// What the report says of an allocator probed after the process started:
/// what it allocated before then was not seen, and cannot be counted.
fn late_probes(probed: &[FileProbes], started_ns: Option<u64>) -> Option<String> {
    let started_ns = started_ns?;
    let late = probed
        .iter()
        .filter(|f| f.is_allocator() && f.ready_ns > started_ns)
        .max_by_key(|f| f.ready_ns)?;
    Some(format!(
        "its allocator {} was first probed {:.1} ms after it started (tracer had not seen that file before): what it allocated until then was not seen",
        late.path,
        (late.ready_ns - started_ns) as f64 / 1e6
    ))
}

/// What the first half found.
pub struct Found {
    maps: ProcessMaps,
    known: Result<Known, DetectError>,
}

impl Found {
    /// Whether it runs a CPython tracer can read.
    pub fn is_python(&self) -> bool {
        matches!(self.known, Ok(Known::Before | Known::Now { .. }))
    }
}

/// Whether a process's interpreter is known.
#[derive(Clone, PartialEq, Eq)]
enum Known {
    Before,
    /// Found just now; a warning if its version is newer than tracer knows.
    Now {
        warning: Option<String>,
    },
    No,
}

/// "CPython 3.11 (/usr/bin/python3.11)"
pub fn describe(version: &str, module: &str) -> String {
    format!("CPython {version} ({module})")
}

/// What the report should say about how much of a Python process's object
/// allocation tracer sees.
fn allocator_notes(pid: Pid, probed: &[FileProbes], pymalloc: bool) -> Vec<String> {
    if procfs::python_malloc_is_libc(pid) {
        return vec![
            "PYTHONMALLOC=malloc: every object allocation goes through libc, and is traced".into(),
        ];
    }
    if !pymalloc {
        return vec!["objects of 512 bytes or less come from CPython's own allocator and are not traced (see --pymalloc)".into()];
    }
    let hooked: Vec<&str> = probed
        .iter()
        .flat_map(|f| f.pymalloc.iter().map(|p| p.function.as_str()))
        .collect();
    if hooked.is_empty() {
        return vec!["--pymalloc: no object allocator function found to probe".into()];
    }
    let lto = hooked.iter().any(|n| n.contains(".lto_priv."));
    let mut note = format!("--pymalloc: probing {}", hooked.join(", "));
    if lto {
        note.push_str(
            "; this is an LTO build that inlines the object allocator into its callers, so only the calls that reach these functions are seen (a few percent): run it with PYTHONMALLOC=malloc for every object",
        );
    }
    vec![note]
}
