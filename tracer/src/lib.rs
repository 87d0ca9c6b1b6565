//! tracer: an eBPF memory allocation tracer for Python services.
//!
//! One recording is sources -> model -> sinks, run by one engine
//! (`recording`) for `record`, `top` and `daemon`: targets, probes and the
//! collector produce events, the process lifecycle decides what becomes of
//! each process; the model (heap, stacks, per-process registry, Python
//! resolution) holds state; sinks (the capture, `top`'s view, the daemon's
//! windows) consume the same events and snapshots, and stacks symbolized
//! once. docs/architecture.md is the map.

pub mod capture;
pub mod census;
mod cli;
mod clock;
pub mod counters;
mod daemon;
mod elf;
pub mod escape;
pub mod event;
pub mod frame;
mod host;
pub mod labels;
mod lru;
pub mod model;
mod offline;
mod outputs;
mod proc_maps;
pub mod process;
mod python;
mod record;
mod recording;
pub mod report;
pub mod sampling;
pub mod sinks;
pub mod sources;
pub mod stdio;
pub mod symbolize;
mod target_file;
mod top;
mod user;

use std::process::ExitCode;

use clap::Parser as _;

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        // Log lines carry paths and command lines of traced processes:
        // escaped, so that each stays one line without terminal escapes.
        .format(|buf, record| {
            use std::io::Write as _;
            let style = buf.default_level_style(record.level());
            writeln!(
                buf,
                "[{style}{:<5}{style:#}] {}",
                record.level(),
                escape::text(&record.args().to_string())
            )
        })
        .init();
}

/// The `tracer` command: parses the command line, runs it, and turns every
/// error into one line on stderr and a non-zero exit.
pub fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help, --version
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            let rendered = err.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            stdio::line(&format!("error: {first} (see `tracer --help`)"));
            return ExitCode::from(2);
        }
    };
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            stdio::line(&format!("error: cannot start the async runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Record(args) => record::run(args.validate()?).await,
            cli::Command::Report(args) => offline::run(args),
            cli::Command::Top(args) => top::run(args.validate()?).await,
            cli::Command::Daemon(args) => daemon::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): what it read was what it wanted.
        Err(err) if err.is::<stdio::OutputClosed>() => ExitCode::SUCCESS,
        Err(err) => {
            stdio::line(&format!("error: {err:#}"));
            ExitCode::FAILURE
        }
    }
}
