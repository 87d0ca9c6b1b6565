//! `tracer record`: a recording into a capture file, then the end-of-run
//! reports made from it, exactly as `tracer report` makes them, so that
//! what is printed is what the files hold. Prints the leak and hotspot
//! tables; with `-o`, writes report.json and the folded stacks beside the
//! capture.

use std::io::Write as _;

use anyhow::{Context as _, Result, bail};

use crate::{
    capture::Contents,
    cli::{RecordOptions, ReportSettings},
    outputs::OutputDir,
    recording::{Engine, Hooks},
    report::{
        Report,
        analysis::analyze,
        render::{self, Format, Of},
    },
    sinks::capture::{CaptureFile, CaptureSink},
    symbolize::feed::Symbols,
};

pub async fn run(options: RecordOptions) -> Result<()> {
    // Checked before anything is loaded: a bad -o fails at once.
    let output = options
        .output
        .dir
        .as_deref()
        .map(OutputDir::create)
        .transpose()?;
    let engine = Engine::start(options.engine, Hooks::default())?;
    let mut symbols = Symbols::default();
    let sink = CaptureSink::file(
        output.as_ref(),
        options.output.max_capture_bytes,
        engine.start_ns(),
        &engine.links(),
        symbols.subscribe(),
    )?;
    let capture = sink.capture();
    let recorded = engine.record(vec![Box::new(sink)], symbols).await;
    // The reports of whatever was recorded, also when the recording failed.
    let reported = report(&capture, output.as_ref(), &options.reports);
    recorded.and(reported)
}

/// Reads the finished capture back and prints its reports; with `-o`,
/// writes its files.
fn report(
    capture: &CaptureFile,
    output: Option<&OutputDir>,
    settings: &ReportSettings,
) -> Result<()> {
    let read = Contents::read_file(capture.file.clone());
    if let Some(error) = read.error {
        bail!("reading back {}: {error}", capture.shown);
    }
    let mut report = analyze(&read.contents, &settings.analysis);
    crate::report::source::fill_report(&mut report);
    if let Some(dir) = output {
        write_outputs(dir, &report, settings.top)?;
    }
    let text = render::render(
        &report,
        Format::Text,
        &render::Options {
            top: settings.top,
            of: Of::Leaks,
            sections: render::RECORD_SECTIONS.to_vec(),
        },
    )?;
    crate::stdio::out(&text)
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
