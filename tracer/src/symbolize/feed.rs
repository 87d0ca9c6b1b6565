//! The recording's stack feed: one symbolizer per recording: every stack the model interns is
//! symbolized once, on a thread of its own (blazesym reads a library's
//! DWARF the first time, up to a second), whatever sinks run, and its
//! definition is sent to every sink that asked for stacks (`StackDefs`).
//! The engine offers the stacks interned since the last snapshot before
//! each snapshot; a sink that needs a stack's definition before it goes on
//! (the capture before a flush, the daemon's export before encoding a
//! window) waits for it.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        mpsc::{self, Receiver, Sender},
    },
    thread::JoinHandle,
};

use log::warn;

use super::{Symbolizer, Unsymbolized};
use crate::{event::StackId, frame::StackDef, model::Model};

/// A stack interned since the last offer, with what symbolizing it needs.
pub struct NewStack {
    pub id: StackId,
    pub stack: Unsymbolized,
}

/// The stacks of one offer, and where debug files may be for the modules
/// known then.
struct Offer {
    debug_dirs: Vec<PathBuf>,
    stacks: Vec<NewStack>,
}

/// A stack's definition, shared by every sink that keeps it.
pub type Defined = Arc<StackDef>;

/// The recording's symbolizer: the sinks that want stacks subscribe
/// before the recording begins.
#[derive(Default)]
pub struct Symbols {
    subscribers: Vec<Sender<Defined>>,
    running: Option<Running>,
    /// Stacks 0 to `offered - 1` were handed to the thread.
    offered: usize,
}

struct Running {
    offers: Sender<Offer>,
    thread: JoinHandle<u64>,
}

impl Symbols {
    /// Another sink's feed of stack definitions, in id order from 0.
    pub fn subscribe(&mut self) -> StackDefs {
        let (tx, rx) = mpsc::channel();
        self.subscribers.push(tx);
        StackDefs {
            rx,
            defs: Vec::new(),
        }
    }

    /// Hands the stacks the model interned since the last offer to the
    /// symbolizing thread (started at the first offer, if a sink
    /// subscribed).
    pub fn offer(&mut self, model: &Model) {
        let known = model.stacks().count();
        if (self.subscribers.is_empty() && self.running.is_none()) || known <= self.offered {
            return;
        }
        let stacks = new_stacks(model, self.offered);
        self.offered = known;
        let running = match &mut self.running {
            Some(running) => running,
            slot => {
                let subscribers = std::mem::take(&mut self.subscribers);
                let (offers, rx) = mpsc::channel();
                let started = std::thread::Builder::new()
                    .name("symbols".into())
                    .spawn(move || run(&rx, &subscribers));
                match started {
                    Ok(thread) => slot.insert(Running { offers, thread }),
                    Err(err) => {
                        // Without the thread the subscribers see their feed
                        // end: their stacks stay unnamed, not waited for.
                        warn!("cannot start the symbolizer thread: {err}");
                        return;
                    }
                }
            }
        };
        let offer = Offer {
            debug_dirs: model.debug_dirs(),
            stacks,
        };
        if running.offers.send(offer).is_err() {
            warn!("the symbolizer thread stopped");
        }
    }

    /// Symbolizes what was offered, and returns how many stacks were
    /// symbolized in all (each once).
    pub fn finish(self) -> u64 {
        drop(self.subscribers);
        let Some(Running { offers, thread }) = self.running else {
            return 0;
        };
        drop(offers);
        thread.join().unwrap_or_else(|_| {
            warn!("the symbolizer thread panicked");
            0
        })
    }
}

fn run(offers: &Receiver<Offer>, subscribers: &[Sender<Defined>]) -> u64 {
    let mut symbolizer: Option<Symbolizer> = None;
    let mut symbolized = 0;
    for Offer { debug_dirs, stacks } in offers {
        // Debug directories are known once the targets' libraries are.
        let symbolizer = symbolizer.get_or_insert_with(|| Symbolizer::new(&debug_dirs));
        symbolizer.set_debug_dirs(&debug_dirs);
        for NewStack { stack, .. } in stacks {
            let def = Arc::new(symbolizer.symbolize(&stack));
            symbolized += 1;
            for s in subscribers {
                // A sink that finished early no longer listens.
                let _ = s.send(def.clone());
            }
        }
    }
    symbolized
}

/// The model's stacks from the `from`th on, with what symbolizing them
/// needs.
pub fn new_stacks(model: &Model, from: usize) -> Vec<NewStack> {
    (from..model.stacks().count())
        .map(|i| {
            let id = StackId(i as u32);
            NewStack {
                id,
                stack: unsymbolized(model, id),
            }
        })
        .collect()
}

/// Stack `id` of the model, with what symbolizing it needs.
pub fn unsymbolized(model: &Model, id: StackId) -> Unsymbolized {
    let stacks = model.stacks();
    let stack = stacks.get(id);
    let python = stack.python.iter().map(|l| stacks.python_location(*l));
    Unsymbolized::new(stack, model.modules(), python)
}

/// One sink's feed of stack definitions: stack `i` is the `i`th received.
pub struct StackDefs {
    rx: Receiver<Defined>,
    defs: Vec<Defined>,
}

impl StackDefs {
    /// Waits until stacks 0 to `count - 1` are defined (or the symbolizer
    /// is gone); returns the ids newly defined.
    pub fn wait_for(&mut self, count: usize) -> std::ops::Range<usize> {
        let from = self.defs.len();
        while self.defs.len() < count {
            match self.rx.recv() {
                Ok(def) => self.defs.push(def),
                Err(_) => break,
            }
        }
        from..self.defs.len()
    }

    /// Waits for the next definition; returns its stack, or `None` once
    /// the symbolizer is gone.
    pub fn recv(&mut self) -> Option<StackId> {
        let def = self.rx.recv().ok()?;
        self.defs.push(def);
        Some(StackId(self.defs.len() as u32 - 1))
    }

    /// The definitions received by now, without waiting; returns the ids
    /// newly defined.
    pub fn received(&mut self) -> std::ops::Range<usize> {
        let from = self.defs.len();
        self.defs.extend(self.rx.try_iter());
        from..self.defs.len()
    }

    pub fn get(&self, id: StackId) -> Option<&Defined> {
        self.defs.get(id.0 as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stacks::RawStack;

    /// Interns stacks `from` to `to - 1` of this process (unmapped frames).
    fn intern(model: &mut Model, from: u64, to: u64) {
        for i in from..to {
            let frames = [0x1000 + i];
            model.intern(
                std::process::id(),
                RawStack {
                    ts_ns: 0,
                    func: tracer_common::func::MALLOC,
                    frames: &frames,
                    caller: None,
                    lost: false,
                    full: false,
                    python: &[],
                    python_full: false,
                    python_lost: false,
                },
            );
        }
    }

    #[test]
    fn every_stack_is_symbolized_once_for_every_sink() {
        let mut model = Model::default();
        intern(&mut model, 0, 3);
        let mut symbols = Symbols::default();
        let mut capture = symbols.subscribe();
        let mut export = symbols.subscribe();
        symbols.offer(&model);
        // Offered again with nothing new: nothing is symbolized again.
        symbols.offer(&model);
        assert_eq!(capture.wait_for(3), 0..3);
        intern(&mut model, 3, 5);
        symbols.offer(&model);
        assert_eq!(capture.wait_for(5), 3..5);
        assert_eq!(export.wait_for(5), 0..5);
        assert!(Arc::ptr_eq(
            capture.get(StackId(4)).expect("defined"),
            export.get(StackId(4)).expect("defined")
        ));
        assert_eq!(symbols.finish(), 5, "five stacks, each symbolized once");
    }

    #[test]
    fn without_a_subscriber_nothing_is_symbolized() {
        let mut model = Model::default();
        intern(&mut model, 0, 2);
        let mut symbols = Symbols::default();
        symbols.offer(&model);
        assert_eq!(symbols.finish(), 0);
    }
}
