//! The end-of-run reports: made from the capture once it is complete,
//! exactly as `tracer report` makes them, so that what is printed is what
//! the files hold. Prints the leak and hotspot tables; with `-o`, writes
//! report.json and the folded stacks beside the capture.

use std::io::Write as _;

use anyhow::{Context as _, Result, bail};

use super::{Ending, Sink, Snapshot, capture::CaptureFile};
use crate::{
    capture::Contents,
    event::HeapEvent,
    outputs::OutputDir,
    report::{
        Report,
        analysis::{self, analyze},
        render::{self, Format, Of},
    },
};

pub struct ReportsSink {
    capture: CaptureFile,
    /// `-o`: where report.json and the folded stacks go.
    output: Option<OutputDir>,
    analysis: analysis::Options,
    /// Entries per list and process.
    top: usize,
}

impl ReportsSink {
    pub fn new(
        capture: CaptureFile,
        output: Option<OutputDir>,
        analysis: analysis::Options,
        top: usize,
    ) -> Self {
        Self {
            capture,
            output,
            analysis,
            top,
        }
    }
}

/// Writes the files `tracer record -o DIR` leaves beside its capture.
fn write_outputs(dir: &OutputDir, report: &Report, top: usize) -> Result<()> {
    for (name, format, of) in [
        ("report.json", Format::Json, Of::Leaks),
        ("stacks.folded", Format::Folded, Of::Leaks),
        ("hotspots.folded", Format::Folded, Of::Hotspots),
    ] {
        let options = render::Options {
            top,
            of,
            sections: Vec::new(),
        };
        let path = dir.path().join(name);
        let bytes = render::render(report, format, &options)
            .with_context(|| format!("cannot render {}", path.display()))?;
        dir.create_file(name)?
            .write_all(&bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

impl Sink for ReportsSink {
    fn events(&mut self, _events: &[HeapEvent]) -> Result<()> {
        Ok(())
    }

    fn snapshot(&mut self, _snapshot: &Snapshot<'_>) -> Result<()> {
        Ok(())
    }

    fn finish(self: Box<Self>, _end: &Ending) -> Result<()> {
        let read = Contents::read_file(self.capture.file.clone());
        if let Some(error) = read.error {
            bail!("reading back {}: {error}", self.capture.shown);
        }
        let mut report = analyze(&read.contents, &self.analysis);
        crate::report::source::fill_report(&mut report);
        if let Some(dir) = &self.output {
            write_outputs(dir, &report, self.top)?;
        }
        let text = render::render(
            &report,
            Format::Text,
            &render::Options {
                top: self.top,
                of: Of::Leaks,
                sections: render::RECORD_SECTIONS.to_vec(),
            },
        )?;
        crate::stdio::out(&text)
    }
}
