//! `tracer report CAPTURE KIND`: every report again, from a capture file,
//! without root or the traced machine's files, through the same analysis
//! and renderers as `tracer record`.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{
    capture::{CaptureError, Contents, FileRead, capture_files},
    cli::{self, ReportArgs, ReportKind},
    report::{
        self,
        analysis::{self, GrowthOptions, Temporary, analyze_with, lines::Selector},
        render::{self, Format, Of, Section},
    },
};

/// A capture file's, or a directory of segments', contents; the error of
/// the first one cut short or damaged, with its name.
fn read(args: &ReportArgs) -> Result<(Contents, Option<(String, CaptureError)>)> {
    let shown = args.capture.display().to_string();
    if args.capture.is_dir() {
        let files = capture_files(&args.capture)
            .with_context(|| format!("cannot read the directory {shown}"))?;
        if files.is_empty() {
            bail!(
                "{shown} holds no capture: give the directory of `tracer daemon -o DIR` or `tracer record -o DIR`"
            );
        }
        let (contents, records, mut errors) = Contents::read_segments(files);
        if records == 0
            && let Some((name, error)) = errors.first()
        {
            bail!("{shown}/{name}: {error}");
        }
        let first = (!errors.is_empty()).then(|| errors.remove(0));
        return Ok((
            contents,
            first.map(|(name, e)| (format!("{shown}/{name}"), e)),
        ));
    }
    // Non-blocking: opening a FIFO for reading would wait for a writer.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&args.capture)
        .map_err(|e| anyhow!("{shown}: {}", CaptureError::Open(e.to_string())))?;
    // A FIFO or a device would block or never end.
    let kind = file
        .metadata()
        .with_context(|| format!("cannot read {shown}"))?
        .file_type();
    if !kind.is_file() || kind.is_fifo() {
        bail!(
            "{shown} is not a regular file: give the capture.tracer that `tracer record -o DIR` writes"
        );
    }
    let FileRead {
        contents,
        records,
        error,
    } = Contents::read_file(Arc::new(file));
    if records == 0
        && let Some(error) = &error
    {
        match error {
            CaptureError::NotCapture => bail!(
                "{shown}: {error}: give the capture.tracer that `tracer record -o DIR` writes"
            ),
            _ => bail!("{shown}: {error}"),
        }
    }
    Ok((contents, error.map(|e| (shown, e))))
}

pub fn run(args: ReportArgs) -> Result<()> {
    args.check()?;
    let (contents, error) = read(&args)?;
    let temporary = match args.temporary_allocations {
        Some(n) => Temporary::BeforeAllocations(n),
        None => Temporary::Within {
            ns: (args.temporary_ms.max(0.0) * 1e6) as u64,
        },
    };
    let analysis_options = analysis::Options {
        view: args.view.view(),
        min_age_ns: args.view.min_age_ns(),
        temporary,
        include_thread_stacks: args.view.include_thread_stacks,
    };
    if args.kind == ReportKind::Lines {
        let bytes = lines(&args, &contents, &analysis_options)?;
        return write(&args, &bytes, error);
    }
    let growth = GrowthOptions {
        windows: args.growth.growth_windows.max(1),
        window_ns: match args.growth.window_secs {
            Some(w) if w.is_finite() && w > 0.0 => Some((w * 1e9) as u64),
            Some(w) => bail!("--window-secs must be a positive number of seconds, not {w}"),
            None => None,
        },
    };
    let mut report = analyze_with(&contents, &analysis_options, &growth);
    report::source::fill_report(&mut report);
    let (format, sections) = format_of(&args);
    let options = render::Options {
        top: args.view.top,
        of: match args.of {
            cli::Of::Leaks => Of::Leaks,
            cli::Of::Hotspots => Of::Hotspots,
            cli::Of::Peak => Of::Peak,
        },
        sections,
    };
    let bytes = render::render(&report, format, &options)?;
    write(&args, &bytes, error)
}

/// Writes a report where `args` say; then fails if the capture was not
/// read to its end.
fn write(args: &ReportArgs, bytes: &[u8], error: Option<(String, CaptureError)>) -> Result<()> {
    match &args.output {
        Some(path) => crate::outputs::create_file(path)?
            .write_all(bytes)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => crate::stdio::out(bytes)?,
    }
    // What was read before a cut or corrupt record is reported; the error
    // still says where reading stopped.
    if let Some((shown, error)) = error {
        bail!("{shown}: {error}; the report covers what was read before it");
    }
    Ok(())
}

/// `tracer report CAPTURE lines --function NAME [--file PATH]`.
fn lines(args: &ReportArgs, contents: &Contents, options: &analysis::Options) -> Result<Vec<u8>> {
    if args.function.is_none() && args.file.is_none() {
        bail!(
            "lines: give --function NAME (and --file PATH if several files have it), or --file PATH for a whole file"
        );
    }
    let selector = Selector {
        function: args.function.clone(),
        file: args.file.clone(),
    };
    let Some(mut table) = analysis::lines::function_lines(contents, options, &selector) else {
        let what = match (&args.function, &args.file) {
            (Some(f), Some(p)) => format!("function {f} in {p}"),
            (Some(f), None) => format!("function {f}"),
            (None, Some(p)) => format!("file {p}"),
            (None, None) => unreachable!("checked above"),
        };
        bail!(
            "no allocation recorded in {what} (Python frames are matched by name and by the end of their file's path)"
        );
    };
    report::source::fill(&mut table, report::source::read);
    Ok(match args.format {
        cli::Format::Json => render::lines::json(&table)?,
        cli::Format::Text => render::lines::text(&table).into_bytes(),
    })
}

/// The format a report kind is rendered in, and its text sections.
fn format_of(args: &ReportArgs) -> (Format, Vec<Section>) {
    let section = match args.kind {
        ReportKind::Leaks => Section::Leaks,
        ReportKind::Hotspots => Section::Hotspots,
        ReportKind::Peak => Section::Peak,
        ReportKind::Temporary => Section::Temporary,
        ReportKind::Summary => Section::Summary,
        ReportKind::Types => Section::Types,
        ReportKind::Growth => Section::Growth,
        // Made apart (`lines`).
        ReportKind::Lines => Section::Lines,
        ReportKind::Flamegraph => return (Format::Flamegraph, Vec::new()),
        ReportKind::Pprof => return (Format::Pprof, Vec::new()),
        ReportKind::Speedscope => return (Format::Speedscope, Vec::new()),
        ReportKind::Html => return (Format::Html, Vec::new()),
    };
    match args.format {
        cli::Format::Json => (Format::Json, Vec::new()),
        cli::Format::Text => (Format::Text, vec![section]),
    }
}
