//! From runs to the results: slowdown ratios, the sampling check, the JSON
//! document and the Markdown table.

use std::{collections::BTreeMap, process::Command, thread};

use serde_json::{Value, json};

use super::{MODES, PYTHON, Run, SAMPLED, children::output};

pub(super) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

pub(super) fn summarize(
    workloads: &[&str],
    runs: &BTreeMap<(usize, usize), Vec<Run>>,
    rounds: usize,
    scale: f64,
    quick: bool,
    collector: &Value,
    web: &[Value],
) -> Value {
    let mut rows = Vec::new();
    let mut sampling = Value::Null;
    for (w, workload) in workloads.iter().enumerate() {
        let base = &runs[&(w, 0)];
        for (m, mode) in MODES.iter().enumerate() {
            let these = &runs[&(w, m)];
            let ratios: Vec<f64> = these
                .iter()
                .zip(base)
                .map(|(r, b)| r.elapsed_s / b.elapsed_s)
                .collect();
            let opt_median = |f: &dyn Fn(&Run) -> Option<f64>| {
                let xs: Vec<f64> = these.iter().filter_map(f).collect();
                (!xs.is_empty()).then(|| median(xs))
            };
            let events_per_s = opt_median(&|r| r.events.map(|e| e as f64 / r.elapsed_s));
            rows.push(json!({
                "workload": workload,
                "mode": mode.name,
                "elapsed_s": these.iter().map(|r| r.elapsed_s).collect::<Vec<_>>(),
                "slowdown_median": median(ratios.clone()),
                "slowdown_min": ratios.iter().copied().fold(f64::INFINITY, f64::min),
                "slowdown_max": ratios.iter().copied().fold(0.0, f64::max),
                "events_per_s": events_per_s,
                "events": these.iter().map(|r| r.events).collect::<Vec<_>>(),
                "lost": these.iter().map(|r| r.lost).collect::<Vec<_>>(),
                "daemon_cpu_s": opt_median(&|r| r.daemon_cpu_s),
                "daemon_peak_rss_mib": opt_median(&|r| r.daemon_rss_mib),
            }));
        }
        if *workload == "leak" {
            sampling = sampling_check(w, runs);
        }
    }
    json!({
        "machine": machine(),
        "python": PYTHON,
        "quick": quick,
        "rounds": rounds,
        "scale": scale,
        "results": rows,
        "web": web,
        "sampling_accuracy": sampling,
        "collector": collector,
    })
}

/// Sampled tracer against exact tracer on the leak workload: the bytes at
/// the leaking line, per round.
fn sampling_check(w: usize, runs: &BTreeMap<(usize, usize), Vec<Run>>) -> Value {
    let index = |name: &str| MODES.iter().position(|m| m.name == name).expect("mode");
    let exact: Vec<u64> = runs[&(w, index("tracer"))]
        .iter()
        .filter_map(|r| r.leak_line_bytes)
        .collect();
    let sampled: Vec<u64> = runs[&(w, index("tracer --sample-bytes 64KiB"))]
        .iter()
        .filter_map(|r| r.leak_line_bytes)
        .collect();
    let errors: Vec<f64> = exact
        .iter()
        .zip(&sampled)
        .map(|(&e, &s)| (s as f64 - e as f64) / e.max(1) as f64)
        .collect();
    let worst = errors.iter().map(|e| e.abs()).fold(0.0, f64::max);
    json!({
        "sample_bytes": SAMPLED[1].parse::<u64>().unwrap_or(0),
        "exact_leak_bytes": exact,
        "sampled_leak_bytes": sampled,
        "relative_errors": errors,
        "worst_abs_error": worst,
        "within_10_percent": worst <= 0.10 && !errors.is_empty(),
    })
}

fn machine() -> Value {
    let uname = output(Command::new("uname").arg("-sr")).unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    json!({"kernel": uname.trim(), "cpus": cpus})
}

pub(super) fn markdown(results: &Value) -> String {
    let mut s = String::new();
    if results["quick"] == true {
        s.push_str(
            "\nSMOKE TEST (--quick): one round at a tenth of the size. Short runs are\n\
             dominated by start-up and attach; these ratios do not predict the full\n\
             run's: quote only `cargo xtask bench`.\n",
        );
    }
    s.push_str(&format!(
        "\nOverhead on {} ({} CPUs), {}, {} rounds, scale {}\n\n",
        results["machine"]["kernel"].as_str().unwrap_or("?"),
        results["machine"]["cpus"],
        PYTHON,
        results["rounds"],
        results["scale"]
    ));
    s.push_str("| workload | mode | slowdown (median) | spread | events/s | lost | daemon CPU s | daemon peak RSS MiB |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
    let num = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or_else(|| "–".to_owned(), |x| format!("{x:.digits$}"))
    };
    for row in results["results"].as_array().into_iter().flatten() {
        if row["mode"] == "untraced" {
            let times = row["elapsed_s"].as_array().cloned().unwrap_or_default();
            let t: Vec<f64> = times.iter().filter_map(Value::as_f64).collect();
            s.push_str(&format!(
                "| {} | untraced | {:.3} s | | | | | |\n",
                row["workload"].as_str().unwrap_or("?"),
                median(t)
            ));
            continue;
        }
        let lost: u64 = row["lost"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .sum();
        let has_lost = row["lost"]
            .as_array()
            .is_some_and(|l| l.iter().any(Value::is_u64));
        s.push_str(&format!(
            "| {} | {} | {:.2}x | {:.2}–{:.2} | {} | {} | {} | {} |\n",
            row["workload"].as_str().unwrap_or("?"),
            row["mode"].as_str().unwrap_or("?"),
            row["slowdown_median"].as_f64().unwrap_or(f64::NAN),
            row["slowdown_min"].as_f64().unwrap_or(f64::NAN),
            row["slowdown_max"].as_f64().unwrap_or(f64::NAN),
            row["events_per_s"]
                .as_f64()
                .map_or_else(|| "–".to_owned(), |x| format!("{:.0}", x)),
            if has_lost {
                lost.to_string()
            } else {
                "–".to_owned()
            },
            num(&row["daemon_cpu_s"], 2),
            num(&row["daemon_peak_rss_mib"], 1),
        ));
    }
    let sampling = &results["sampling_accuracy"];
    if !sampling.is_null() {
        s.push_str(&format!(
            "\nSampling ({} bytes) on leak.py: bytes at the leaking line, exact {} vs sampled {}; worst error {:.1}% ({})\n",
            sampling["sample_bytes"],
            sampling["exact_leak_bytes"],
            sampling["sampled_leak_bytes"],
            sampling["worst_abs_error"].as_f64().unwrap_or(f64::NAN) * 100.0,
            if sampling["within_10_percent"] == true { "within 10%" } else { "NOT within 10%" },
        ));
    }
    s.push_str(&web_markdown(
        results["web"].as_array().map_or(&[], Vec::as_slice),
    ));
    let c = &results["collector"];
    s.push_str(&format!(
        "\nCollector on one core (synthetic records): {} events/s decoded and applied to the heap model; {} bytes of state per live allocation\n",
        num(&c["events_per_s"], 0),
        num(&c["bytes_per_live_allocation"], 0),
    ));
    s
}

/// The web service rows: throughput share, latency, tracer's CPU, probes'
/// removal.
fn web_markdown(rows: &[Value]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let num = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or_else(|| "–".to_owned(), |x| format!("{x:.digits$}"))
    };
    let share = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "–".to_owned(), |x| format!("{:.1}%", x * 100.0))
    };
    let mut s = format!(
        "\nFlask JSON API on gunicorn (2 workers), wrk -t2 -c16 over loopback, {} s per run\n\n",
        rows[0]["load_s"]
    );
    s.push_str("| python | mode | requests/s (median) | share of untraced | p50 ms | p99 ms | tracer CPU (one core) | tracer CPU after 2 s | probes gone after SIGINT | events | lost |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in rows {
        let sum = |key: &str| -> Option<u64> {
            let xs: Vec<u64> = row[key]
                .as_array()?
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            (!xs.is_empty()).then(|| xs.iter().sum())
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row["python"].as_str().unwrap_or("?"),
            row["mode"].as_str().unwrap_or("?"),
            num(&row["requests_per_s_median"], 0),
            num(&row["share_of_untraced_median"], 2),
            num(&row["p50_ms_median"], 2),
            num(&row["p99_ms_median"], 2),
            share(&row["tracer_cpu_share_median"]),
            match (
                row["tracer_cpu_share_settled_median"].as_f64(),
                row["tracer_cpu_settled_resolution"].as_f64(),
            ) {
                // Less than one clock tick in the window: say so, not 0.0%.
                (Some(x), Some(tick)) if x < tick => {
                    format!("< {:.1}%", (tick * 1000.0).ceil() / 10.0)
                }
                _ => share(&row["tracer_cpu_share_settled_median"]),
            },
            row["detach_ms_median"]
                .as_f64()
                .map_or_else(|| "–".to_owned(), |x| format!("{x:.0} ms")),
            sum("events").map_or_else(|| "–".to_owned(), |n| n.to_string()),
            sum("lost").map_or_else(|| "–".to_owned(), |n| n.to_string()),
        ));
    }
    s.push_str("\nWhat tracer's programs cost per request (bpf_stats over the load windows):\n\n");
    for row in rows {
        let Some(programs) = row["programs"].as_array().filter(|p| !p.is_empty()) else {
            continue;
        };
        let listed: Vec<String> = programs
            .iter()
            .map(|p| {
                format!(
                    "{} {:.1} runs x {:.0} ns",
                    p["name"].as_str().unwrap_or("?"),
                    p["runs_per_request"].as_f64().unwrap_or(0.0),
                    p["ns_per_run"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        let total: f64 = programs
            .iter()
            .filter_map(|p| p["us_per_request"].as_f64())
            .sum();
        s.push_str(&format!(
            "- {} / {}: {:.1} µs per request: {}\n",
            row["python"].as_str().unwrap_or("?"),
            row["mode"].as_str().unwrap_or("?"),
            total,
            listed.join(", ")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::web_markdown;

    fn row(settled: f64, resolution: f64) -> serde_json::Value {
        json!({
            "python": "p", "mode": "m", "load_s": 3,
            "requests_per_s_median": 100.0, "share_of_untraced_median": 1.0,
            "p50_ms_median": 1.0, "p99_ms_median": 2.0,
            "tracer_cpu_share_median": 0.2,
            "tracer_cpu_share_settled_median": settled,
            "tracer_cpu_settled_resolution": resolution,
            "events": [1], "lost": [0],
        })
    }

    #[test]
    fn a_settled_share_below_one_tick_is_not_printed_as_zero() {
        let table = web_markdown(&[row(0.0, 0.0095)]);
        assert!(table.contains("| 20.0% | < 1.0% |"), "{table}");
        let table = web_markdown(&[row(0.021, 0.001)]);
        assert!(table.contains("| 20.0% | 2.1% |"), "{table}");
    }
}
