//! `--metrics ADDR`: Prometheus' text format at GET /metrics, served on the
//! event loop's runtime with bounds everywhere: a few connections at once,
//! a small request head, a deadline per connection. What is counted lives
//! in atomics (`sinks::stats`); tracer's own memory and CPU are read from
//! /proc at each scrape.

use std::{
    fmt::Write as _,
    fs,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use log::debug;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::sinks::stats::{SinkStats, Stats};

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 8;
/// A scrape's request head is a few hundred bytes.
const MAX_REQUEST: usize = 8192;
const DEADLINE: Duration = Duration::from_secs(5);

/// What the endpoint reports.
#[derive(Clone)]
pub struct Sources {
    pub stats: Arc<Stats>,
    pub sinks: Vec<Arc<SinkStats>>,
}

/// Serves until the runtime stops.
pub async fn serve(listener: TcpListener, sources: Sources) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if active.load(Relaxed) >= MAX_CONNECTIONS {
            continue;
        }
        active.fetch_add(1, Relaxed);
        let (active, sources) = (active.clone(), sources.clone());
        tokio::spawn(async move {
            if tokio::time::timeout(DEADLINE, answer(stream, &sources))
                .await
                .is_err()
            {
                debug!("metrics: a client was too slow");
            }
            active.fetch_sub(1, Relaxed);
        });
    }
}

async fn answer(mut stream: TcpStream, sources: &Sources) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_REQUEST {
            return;
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let mut words = line.split(|b| *b == b' ');
    let (method, path) = (words.next(), words.next());
    let (status, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => ("200 OK", render(sources)),
        (Some(b"GET"), Some(b"/healthz")) => ("200 OK", "ok\n".to_owned()),
        (Some(b"GET"), _) => ("404 Not Found", "not found: try /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "GET only\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// tracer's resident set (bytes), CPU time (seconds) and open descriptors.
pub fn own_usage() -> (u64, f64, u64) {
    // SAFETY: sysconf has no preconditions.
    let (page, tick) = unsafe {
        (
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
        )
    };
    let rss = fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    // Fields after the command (which may hold spaces): utime, stime are
    // the 12th and 13th.
    let cpu = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / tick)
        })
        .unwrap_or(0.0);
    let fds = fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    (rss, cpu, fds)
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, rows: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in rows {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

pub fn render(sources: &Sources) -> String {
    let s = &sources.stats;
    let mut out = String::new();
    let one = |v: u64| vec![(String::new(), v.to_string())];
    let per_sink = |f: &dyn Fn(&SinkStats) -> u64| -> Vec<(String, String)> {
        sources
            .sinks
            .iter()
            .map(|k| (format!("{{sink=\"{}\"}}", k.name), f(k).to_string()))
            .collect()
    };
    metric(
        &mut out,
        "tracer_windows_total",
        "counter",
        "Windows made: one per traced process and interval.",
        &one(s.windows.load(Relaxed)),
    );
    metric(
        &mut out,
        "tracer_windows_dropped_total",
        "counter",
        "Windows the export thread could not take or encode.",
        &one(s.windows_dropped.load(Relaxed)),
    );
    metric(
        &mut out,
        "tracer_push_windows_pushed_total",
        "counter",
        "Windows a backend accepted.",
        &per_sink(&|k| k.pushed.load(Relaxed)),
    );
    metric(
        &mut out,
        "tracer_push_windows_failed_total",
        "counter",
        "Windows a backend refused for good (4xx other than 408 and 429); not retried.",
        &per_sink(&|k| k.failed.load(Relaxed)),
    );
    metric(
        &mut out,
        "tracer_push_retries_total",
        "counter",
        "Push attempts to be tried again (connection errors, timeouts, 5xx, 408, 429).",
        &per_sink(&|k| k.retried.load(Relaxed)),
    );
    let dropped: Vec<(String, String)> = sources
        .sinks
        .iter()
        .flat_map(|k| {
            k.dropped().map(|(reason, n)| {
                (
                    format!("{{sink=\"{}\",reason=\"{reason}\"}}", k.name),
                    n.to_string(),
                )
            })
        })
        .collect();
    metric(
        &mut out,
        "tracer_push_windows_dropped_total",
        "counter",
        "Windows tracer dropped, by reason.",
        &dropped,
    );
    metric(
        &mut out,
        "tracer_push_queue_windows",
        "gauge",
        "Windows waiting to be pushed, in memory or spooled.",
        &per_sink(&|k| k.queued.load(Relaxed)),
    );
    metric(
        &mut out,
        "tracer_spool_bytes",
        "gauge",
        "Bytes of windows in the spool.",
        &per_sink(&|k| k.spool_bytes.load(Relaxed)),
    );
    metric(
        &mut out,
        "tracer_events_total",
        "counter",
        "Allocation events recorded.",
        &one(s.events.load(Relaxed)),
    );
    metric(
        &mut out,
        "tracer_lost_events_total",
        "counter",
        "Events lost in the kernel (ring buffer full).",
        &one(s.lost_events.load(Relaxed)),
    );
    metric(
        &mut out,
        "tracer_traced_processes",
        "gauge",
        "Processes traced now.",
        &one(s.processes.load(Relaxed)),
    );
    metric(
        &mut out,
        "tracer_tracked_allocations",
        "gauge",
        "Live allocations the heap model tracks.",
        &one(s.tracked.load(Relaxed)),
    );
    metric(
        &mut out,
        "tracer_evicted_allocations_total",
        "counter",
        "Allocations forgotten to stay under --max-tracked.",
        &one(s.evicted.load(Relaxed)),
    );
    let (rss, cpu, fds) = own_usage();
    metric(
        &mut out,
        "process_resident_memory_bytes",
        "gauge",
        "tracer's resident memory.",
        &one(rss),
    );
    metric(
        &mut out,
        "process_cpu_seconds_total",
        "counter",
        "tracer's CPU time, user and system.",
        &[(String::new(), format!("{cpu:.2}"))],
    );
    metric(
        &mut out,
        "process_open_fds",
        "gauge",
        "tracer's open file descriptors.",
        &one(fds),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_sink_labels() {
        let sink = Arc::new(SinkStats::new("pyroscope"));
        sink.pushed.store(3, Relaxed);
        let text = render(&Sources {
            stats: Arc::new(Stats::default()),
            sinks: vec![sink],
        });
        assert!(text.contains("tracer_push_windows_pushed_total{sink=\"pyroscope\"} 3\n"));
        assert!(text.contains(
            "tracer_push_windows_dropped_total{sink=\"pyroscope\",reason=\"too_old\"} 0\n"
        ));
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge\n"));
        let (rss, _, fds) = own_usage();
        assert!(rss > 0 && fds > 0);
    }
}
