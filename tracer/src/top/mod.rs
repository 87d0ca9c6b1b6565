//! `tracer top`: what holds memory now, refreshed every second, in the
//! shape of memray's live mode and py-spy top: a header with each
//! process's totals, one table of locations (the innermost Python line, or
//! the allocation function's caller), single keys to sort and switch, `q`
//! to quit. It is a sink of the same recording `tracer record` makes
//! (`recording::Engine`); `--once` (or a stdout that is no terminal) prints
//! one refresh as text.

mod growth;
mod screen;
mod sink;
mod view;

use std::{
    io::IsTerminal as _,
    sync::{Arc, mpsc},
    thread,
};

use anyhow::{Result, anyhow};

use self::{
    sink::{Shared, TopSink},
    view::{Mode, State},
};
use crate::{
    cli::TopOptions,
    recording::{Engine, Hooks},
    symbolize::feed::Symbols,
};

pub async fn run(options: TopOptions) -> Result<()> {
    let once = options.once || !std::io::stdout().is_terminal();
    let (to_view, messages) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let state = State {
        mode: if options.native {
            Mode::Native
        } else {
            Mode::Python
        },
        ..State::default()
    };
    let sampling = options.engine.sampling.map(|s| s.mean_bytes);
    let engine = Engine::start(options.engine, Hooks::default())?;
    let mut symbols = Symbols::default();
    let sink = TopSink::new(to_view, shared.clone(), sampling, symbols.subscribe());
    let view_shared = shared.clone();
    let view = thread::Builder::new()
        .name("tracer-top-view".into())
        .spawn(move || {
            if once {
                screen::once(messages, view_shared, state)
            } else {
                screen::interactive(messages, view_shared, state)
            }
        })?;
    let recorded = engine.record(vec![Box::new(sink)], symbols).await;
    let viewed = view
        .join()
        .map_err(|_| anyhow!("the view's thread panicked"))?;
    recorded.and(viewed)
}
