//! Live objects by type as text: a process's last walk, what grew since
//! its first, and the one-line summary of a leak entry's objects.

use std::fmt::Write as _;

use super::numbers::{grouped, human_bytes};
use crate::{
    census::{Moment, TypeCount},
    report::ProcessTypes,
};

/// When a walk was made, in words.
pub fn moment(m: Moment) -> &'static str {
    match m {
        Moment::Start => "when tracing began",
        Moment::Finalize => "at Py_FinalizeEx (held there)",
        Moment::End => "at the end of the recording",
        Moment::Periodic => "by tracer top",
    }
}

/// "objects: 1,000 bytes (1.98 MiB), 3 dict (192 B)".
pub fn entry_line(types: &[TypeCount]) -> String {
    let shown: Vec<String> = types
        .iter()
        .take(3)
        .map(|t| format!("{} {} ({})", grouped(t.count), t.name, human_bytes(t.bytes)))
        .collect();
    format!("objects: {}", shown.join(", "))
}

/// The types section of one process.
pub fn section(out: &mut String, t: &ProcessTypes, top: usize) {
    let c = &t.coverage;
    let _ = writeln!(
        out,
        "Live objects by type of pid {} (heap walk {}, {:.2} s{}):",
        t.pid,
        moment(t.moment),
        t.at_s,
        if c.estimated {
            "; estimated in part"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "  {} arena blocks ({} read), {} GC objects outside arenas, {} traced objects; {} reads in {:.1} ms{}",
        grouped(c.arena_blocks),
        human_bytes(c.arena_bytes),
        grouped(c.gc_objects),
        grouped(c.traced_objects),
        grouped(c.reads),
        c.micros as f64 / 1e3,
        if c.held_micros > 0 {
            format!(", process held {:.1} ms", c.held_micros as f64 / 1e3)
        } else {
            String::new()
        }
    );
    for note in &t.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    let _ = writeln!(out, "  {:>12} {:>12}  type", "count", "bytes");
    for ty in t.types.iter().take(top) {
        let _ = writeln!(
            out,
            "  {:>12} {:>12}  {}",
            grouped(ty.count),
            human_bytes(ty.bytes),
            ty.name
        );
    }
    if let Some(g) = &t.growth {
        let grown: Vec<_> = g
            .types
            .iter()
            .filter(|t| t.bytes > 0 || t.count > 0)
            .collect();
        let _ = writeln!(
            out,
            "  growth since the walk at {:.2} s ({} types grew):",
            g.since_s,
            grown.len()
        );
        for ty in grown.iter().take(top) {
            let _ = writeln!(
                out,
                "  {:>12} {:>12}  {}",
                format!("{:+}", ty.count),
                format!("+{}", human_bytes(ty.bytes.max(0) as u64)),
                ty.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        census::{Coverage, TypeGrowth},
        report::TypesGrowth,
    };

    #[test]
    fn a_walk_and_its_growth() {
        let t = ProcessTypes {
            pid: 9,
            moment: Moment::Finalize,
            at_s: 2.5,
            types: vec![TypeCount {
                name: "bytes".into(),
                count: 1000,
                bytes: 2_081_000,
            }],
            coverage: Coverage {
                held_micros: 12_000,
                ..Coverage::default()
            },
            notes: vec!["a note".into()],
            growth: Some(TypesGrowth {
                since_s: 0.1,
                types: vec![TypeGrowth {
                    name: "bytes".into(),
                    count: 1000,
                    bytes: 2_081_000,
                    now_count: 1000,
                    now_bytes: 2_081_000,
                }],
            }),
        };
        let mut out = String::new();
        section(&mut out, &t, 10);
        assert!(
            out.starts_with(
                "Live objects by type of pid 9 (heap walk at Py_FinalizeEx (held there), 2.50 s):\n"
            ),
            "{out}"
        );
        assert!(out.contains("process held 12.0 ms"), "{out}");
        assert!(
            out.contains("         1,000     1.98 MiB  bytes\n"),
            "{out}"
        );
        assert!(out.contains("        +1000    +1.98 MiB  bytes\n"), "{out}");
        assert_eq!(entry_line(&t.types), "objects: 1,000 bytes (1.98 MiB)");
    }
}
