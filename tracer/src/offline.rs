//! `tracer report CAPTURE KIND`: every report again, from a capture file,
//! without root or the traced machine's files.

use std::{fs, io::Write as _};

use anyhow::{Context as _, Result, bail};

use crate::{
    capture,
    cli::{Format, Of, ReportArgs, ReportKind},
    report::{
        self, Report, flamegraph, html, json, pprof,
        replay::Temporary,
        speedscope,
        text::{self, Section},
    },
};

pub fn run(args: ReportArgs) -> Result<()> {
    let shown = args.capture.display().to_string();
    let (contents, records, error) = capture::Contents::read_file(&args.capture);
    if records == 0
        && let Some(error) = &error
    {
        match error {
            capture::CaptureError::NotCapture => bail!(
                "{shown}: {error}: give the capture.tracer that `tracer record -o DIR` writes"
            ),
            _ => bail!("{shown}: {error}"),
        }
    }
    let rule = match args.temporary_allocations {
        Some(n) => Temporary::BeforeAllocations(n),
        None => Temporary::Within {
            ns: (args.temporary_ms.max(0.0) * 1e6) as u64,
        },
    };
    let report = report::from_capture(&contents, args.view.view(), args.view.min_age_ns(), rule);
    let bytes = render(&report, &args)?;
    match &args.output {
        Some(path) => {
            fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?
        }
        None => std::io::stdout().write_all(&bytes)?,
    }
    // What was read before a cut or corrupt record is reported; the error
    // still says where reading stopped.
    if let Some(error) = error {
        bail!("{shown}: {error}; the report covers what was read before it");
    }
    Ok(())
}

fn render(report: &Report, args: &ReportArgs) -> Result<Vec<u8>> {
    let top = args.view.top;
    let of = |of: Of| match (of, &report.history) {
        (Of::Leaks, _) => (&report.leaks[..], "leaks (live bytes)"),
        (Of::Hotspots, _) => (&report.hotspots[..], "hotspots (allocated bytes)"),
        (Of::Peak, Some(h)) => (&h.peak[..], "live at the peak (bytes)"),
        (Of::Peak, None) => (&[][..], "live at the peak (bytes)"),
    };
    let command_of = |pid| report::command_name(report, pid);
    let section = match args.kind {
        ReportKind::Leaks => Section::Leaks,
        ReportKind::Hotspots => Section::Hotspots,
        ReportKind::Peak => Section::Peak,
        ReportKind::Temporary => Section::Temporary,
        ReportKind::Summary => Section::Summary,
        ReportKind::Flamegraph => {
            let (entries, title) = of(args.of);
            return Ok(flamegraph::svg(entries, title, command_of)?.into_bytes());
        }
        ReportKind::Pprof => {
            let duration_ns = (report.duration_s * 1e9) as i64;
            return Ok(pprof::render(&report.hotspots, &report.leaks, duration_ns)?);
        }
        ReportKind::Speedscope => {
            let (entries, title) = of(args.of);
            return Ok(speedscope::render(entries, title, command_of)?.into_bytes());
        }
        ReportKind::Html => return Ok(html::render(report, top).into_bytes()),
    };
    Ok(match args.format {
        Format::Json => json::render(report, top)?.into_bytes(),
        Format::Text => text::render_sections(report, &[section], top).into_bytes(),
    })
}
