//! Pushing windows to a backend, one thread per destination so that no
//! backend ever holds up the ring drain or another backend. Each has a
//! bounded queue in memory; a window that fails with something worth
//! retrying (connection refused, timeout, 5xx, 408, 429) is retried with
//! exponential backoff and jitter (or after the server's Retry-After) and,
//! with `--spool-dir`, written to disk at once, so that neither a crash
//! nor a long outage loses it; other 4xx answers are final: the window is
//! dropped and counted. Windows older than an hour are dropped and counted
//! (Pyroscope rejects them). On shutdown the queue is flushed within a
//! deadline; what remains is spooled, or counted as dropped.

mod http;
pub mod parca;
pub mod pyroscope;
pub mod spool;

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::Ordering::Relaxed,
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use log::{debug, warn};
use serde::{Deserialize, Serialize};

use self::{
    http::{Outcome, REQUEST_TIMEOUT},
    spool::{Spool, Spooled},
};
use super::stats::SinkStats;
use crate::labels::Labels;

/// Windows kept in memory per destination; more go to the spool (or are
/// dropped without one).
const QUEUE_IN_MEMORY: usize = 16;
/// Pyroscope rejects profiles older than this (`reject_older_than`).
const MAX_AGE: Duration = Duration::from_secs(3600);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Which profile a pushed window is: the backends keep each as its own
/// profile type (Parca by the `__name__` sent, Pyroscope by the sample
/// types: `window_pprof`, `types_pprof`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileName {
    /// The allocations and live bytes of each stack.
    #[default]
    Memory,
    /// Live objects by type, from a heap walk.
    Types,
}

impl ProfileName {
    pub fn name(self) -> &'static str {
        match self {
            ProfileName::Memory => "memory",
            ProfileName::Types => "types",
        }
    }
}

/// A window encoded for pushing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedWindow {
    pub profile: ProfileName,
    pub labels: Labels,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// The gzipped profile.proto.
    pub body: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Pyroscope,
    Parca,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Pyroscope => "pyroscope",
            Backend::Parca => "parca",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    Basic { username: String, password: String },
    Bearer(String),
}

/// Where and as whom to push; replaced when the configuration is read
/// again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    /// Sent as X-Scope-OrgID (Pyroscope's, Mimir's and Loki's tenant header).
    pub tenant: Option<String>,
    pub auth: Option<Auth>,
}

pub struct PushSettings {
    pub backend: Backend,
    pub endpoint: Arc<RwLock<Endpoint>>,
    /// The directory and its share of `--max-spool-mb`.
    pub spool: Option<(PathBuf, u64)>,
    /// How long a shutdown may spend sending what is queued.
    pub flush_within: Duration,
    pub stats: Arc<SinkStats>,
}

/// A destination's thread, fed windows through a channel.
pub struct Pusher {
    windows: Sender<Arc<EncodedWindow>>,
    thread: JoinHandle<()>,
}

impl Pusher {
    pub fn start(settings: PushSettings) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let spool = match &settings.spool {
            Some((dir, max)) => Some(
                Spool::open(dir, *max)
                    .map_err(|e| std::io::Error::other(format!("spool {}: {e}", dir.display())))?,
            ),
            None => None,
        };
        let thread = std::thread::Builder::new()
            .name(settings.backend.name().into())
            .spawn(move || Queue::new(settings, spool).run(rx))?;
        Ok(Self {
            windows: tx,
            thread,
        })
    }

    pub fn send(&self, window: Arc<EncodedWindow>) {
        let _ = self.windows.send(window);
    }

    /// Flushes within the deadline, spools the rest, and stops.
    pub fn finish(self) {
        drop(self.windows);
        if self.thread.join().is_err() {
            warn!("a push thread panicked");
        }
    }
}

enum Item {
    Memory(Arc<EncodedWindow>),
    Spooled(Spooled),
}

impl Item {
    fn end_unix_ns(&self) -> u64 {
        match self {
            Item::Memory(w) => w.end_unix_ns,
            Item::Spooled(s) => s.end_unix_ns,
        }
    }
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A destination's queue and what it does with it.
struct Queue {
    settings: PushSettings,
    spool: Option<Spool>,
    items: VecDeque<Item>,
    agent: ureq::Agent,
    backoff: Duration,
    next_try: Instant,
    /// Set when no more windows will come: the queue is flushed until then.
    deadline: Option<Instant>,
}

impl Queue {
    fn new(settings: PushSettings, spool: Option<(Spool, Vec<Spooled>, u64)>) -> Self {
        let mut items = VecDeque::new();
        let spool = spool.map(|(spool, found, bad)| {
            if !found.is_empty() {
                eprintln!(
                    "tracer: {}: {} windows left in the spool by an earlier run, to send",
                    settings.backend.name(),
                    found.len()
                );
            }
            SinkStats::add(&settings.stats.dropped_spool_full, bad);
            items.extend(found.into_iter().map(Item::Spooled));
            spool
        });
        let queue = Self {
            settings,
            spool,
            items,
            agent: http::agent(),
            backoff: BACKOFF_FIRST,
            next_try: Instant::now(),
            deadline: None,
        };
        queue.publish();
        queue
    }

    fn stats(&self) -> &SinkStats {
        &self.settings.stats
    }

    fn publish(&self) {
        let s = self.stats();
        s.queued.store(self.items.len() as u64, Relaxed);
        s.spool_bytes
            .store(self.spool.as_ref().map_or(0, Spool::bytes), Relaxed);
    }

    fn run(mut self, rx: Receiver<Arc<EncodedWindow>>) {
        loop {
            let now = Instant::now();
            if let Some(deadline) = self.deadline
                && (self.items.is_empty() || now >= deadline || self.next_try >= deadline)
            {
                break;
            }
            if self.deadline.is_none() {
                let received = if self.items.is_empty() {
                    rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                } else {
                    rx.recv_timeout(self.next_try.saturating_duration_since(now))
                };
                match received {
                    Ok(w) => {
                        self.enqueue(w);
                        while let Ok(w) = rx.try_recv() {
                            self.enqueue(w);
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        self.deadline = Some(Instant::now() + self.settings.flush_within);
                        continue;
                    }
                }
            } else if now < self.next_try {
                std::thread::sleep(self.next_try - now);
                continue;
            }
            self.send_head();
            self.publish();
        }
        self.shut_down();
        self.publish();
        let st = self.stats();
        let dropped: u64 = st.dropped().iter().map(|(_, n)| n).sum();
        eprintln!(
            "tracer: {}: {} pushed, {} refused, {} retries, {} dropped, {} bytes spooled",
            self.settings.backend.name(),
            st.pushed.load(Relaxed),
            st.failed.load(Relaxed),
            st.retried.load(Relaxed),
            dropped,
            st.spool_bytes.load(Relaxed),
        );
    }

    /// Queues a new window, moving the oldest one in memory to the spool
    /// (or dropping it) past the bound.
    fn enqueue(&mut self, window: Arc<EncodedWindow>) {
        self.items.push_back(Item::Memory(window));
        let in_memory = self
            .items
            .iter()
            .filter(|i| matches!(i, Item::Memory(_)))
            .count();
        if in_memory > QUEUE_IN_MEMORY
            && let Some(pos) = self.items.iter().position(|i| matches!(i, Item::Memory(_)))
        {
            if self.spool.is_some() {
                self.spool_at(pos);
            } else {
                self.items.remove(pos);
                SinkStats::add(&self.stats().dropped_queue_full, 1);
            }
        }
        self.publish();
    }

    /// Writes the window at `pos` to the spool, dropping the oldest spooled
    /// windows to make room.
    fn spool_at(&mut self, pos: usize) {
        let (Some(spool), Some(Item::Memory(window))) = (&self.spool, self.items.get(pos)) else {
            return;
        };
        let window = window.clone();
        let needed = Spool::size_of(&window);
        let mut fits = spool.fits(needed);
        while !fits {
            let Some(oldest) = self
                .items
                .iter()
                .position(|i| matches!(i, Item::Spooled(_)))
            else {
                break;
            };
            if let Some(Item::Spooled(s)) = self.items.remove(oldest)
                && let Some(spool) = &mut self.spool
            {
                spool.remove(&s);
                SinkStats::add(&self.settings.stats.dropped_spool_full, 1);
            }
            fits = self.spool.as_ref().is_some_and(|s| s.fits(needed));
        }
        let pos = self
            .items
            .iter()
            .position(|i| matches!(i, Item::Memory(w) if Arc::ptr_eq(w, &window)));
        let (Some(pos), Some(spool)) = (pos, &mut self.spool) else {
            return;
        };
        if !fits {
            self.items.remove(pos);
            SinkStats::add(&self.settings.stats.dropped_spool_full, 1);
            return;
        }
        match spool.write(&window) {
            Ok(s) => self.items[pos] = Item::Spooled(s),
            Err(err) => {
                // The window stays in memory: the disk is full or gone.
                warn!(
                    "{}: cannot spool a window: {err}",
                    self.settings.backend.name()
                );
            }
        }
    }

    fn remove_head(&mut self) {
        if let Some(Item::Spooled(s)) = self.items.pop_front()
            && let Some(spool) = &mut self.spool
        {
            spool.remove(&s);
        }
    }

    fn send_head(&mut self) {
        let Some(head) = self.items.front() else {
            return;
        };
        let age = Duration::from_nanos(unix_now_ns().saturating_sub(head.end_unix_ns()));
        if age > MAX_AGE {
            self.remove_head();
            SinkStats::add(&self.stats().dropped_too_old, 1);
            return;
        }
        let window = match head {
            Item::Memory(w) => w.clone(),
            Item::Spooled(s) => match self.spool.as_ref().map(|sp| sp.read(s)) {
                Some(Ok(w)) => Arc::new(w),
                _ => {
                    warn!(
                        "{}: a spooled window could not be read",
                        self.settings.backend.name()
                    );
                    self.remove_head();
                    SinkStats::add(&self.stats().dropped_spool_full, 1);
                    return;
                }
            },
        };
        let endpoint = match self.settings.endpoint.read() {
            Ok(e) => e.clone(),
            Err(_) => return,
        };
        let request = match self.settings.backend {
            Backend::Pyroscope => pyroscope::request(&window, &endpoint),
            Backend::Parca => parca::request(&window, &endpoint),
        };
        let timeout = match self.deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(200), REQUEST_TIMEOUT),
            None => REQUEST_TIMEOUT,
        };
        match http::send(&self.agent, &endpoint, request, timeout) {
            Outcome::Accepted => {
                SinkStats::add(&self.stats().pushed, 1);
                self.remove_head();
                self.backoff = BACKOFF_FIRST;
                self.next_try = Instant::now();
            }
            Outcome::Refused { status, why } => {
                SinkStats::add(&self.stats().failed, 1);
                warn!(
                    "{}: a window was refused ({status}), not retried: {why}",
                    self.settings.backend.name()
                );
                self.remove_head();
            }
            Outcome::Retry { after, why } => {
                debug!("{}: will retry: {why}", self.settings.backend.name());
                if self.backoff == BACKOFF_FIRST {
                    warn!(
                        "{}: push failed, retrying: {why}",
                        self.settings.backend.name()
                    );
                }
                if self.spool.is_some() && matches!(self.items.front(), Some(Item::Memory(_))) {
                    self.spool_at(0);
                }
                // Counted after the window is on disk and published, so that
                // a reader of /metrics who sees the retry also sees the spool.
                self.publish();
                SinkStats::add(&self.stats().retried, 1);
                let wait = after.unwrap_or_else(|| jittered(self.backoff));
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                self.next_try = Instant::now() + wait;
            }
        }
    }

    /// What could not be sent in time: to the spool, or counted.
    fn shut_down(&mut self) {
        let unsent = self.items.len();
        let first_in_memory = |items: &VecDeque<Item>| {
            items.iter().enumerate().find_map(|(pos, i)| match i {
                Item::Memory(w) => Some((pos, w.clone())),
                Item::Spooled(_) => None,
            })
        };
        while let Some((pos, window)) = first_in_memory(&self.items) {
            if self.spool.is_some() {
                self.spool_at(pos);
            }
            // Not spooled (none, or the disk refused it): dropped.
            if let Some((pos, still)) = first_in_memory(&self.items)
                && Arc::ptr_eq(&still, &window)
            {
                self.items.remove(pos);
                SinkStats::add(&self.stats().dropped_shutdown, 1);
            }
        }
        if unsent > 0 {
            eprintln!(
                "tracer: {}: {unsent} windows not sent at shutdown{}",
                self.settings.backend.name(),
                if self.spool.is_some() {
                    ", kept in the spool"
                } else {
                    " (no --spool-dir): dropped"
                }
            );
        }
    }
}

/// `d` give or take 20%, so that a fleet restarted at once does not retry
/// in step.
fn jittered(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let factor = 0.8 + 0.4 * (f64::from(nanos % 1000) / 1000.0);
    d.mul_f64(factor)
}
