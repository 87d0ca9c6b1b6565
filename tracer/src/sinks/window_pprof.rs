//! A window as a gzipped pprof profile, as Go's heap profiles are shaped:
//! alloc_objects/count and alloc_space/bytes (allocated during the window),
//! inuse_objects/count and inuse_space/bytes (live at its end), period
//! type space/bytes, the window's start and duration. No sample labels:
//! the process's labels go with the push (Pyroscope would make a series of
//! every sample label value). Pyroscope rejects more than 16,000 samples:
//! the smallest stacks beyond that are added up in one `[other stacks]`
//! sample, so that totals stay exact. The window itself (`ProcessWindow`)
//! is defined here: the window sink makes it, the export thread encodes it.

use std::{collections::HashMap, io};

use crate::{
    event::{Pid, StackId},
    frame::{Frame, FrameKind, SymbolizedStack},
    labels::Labels,
    model::heap::Amount,
    report::render::pprof::{Builder, Sample, ValueType, gzip},
};

/// What one stack of one process did in a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowRow {
    pub stack: StackId,
    /// Allocated during the window.
    pub allocated: Amount,
    /// Live at its end.
    pub live: Amount,
}

/// One process's window.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessWindow {
    pub pid: Pid,
    pub labels: Labels,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub rows: Vec<WindowRow>,
}

/// Pyroscope's default `max_profile_stacktrace_samples`.
pub const MAX_SAMPLES: usize = 16_000;

/// Values of one sample: alloc_objects, alloc_space, inuse_objects, inuse_space.
type Values = [i64; 4];

fn other_frame() -> Frame {
    Frame {
        kind: FrameKind::Native,
        function: "[other stacks]".to_owned(),
        module: String::new(),
        file: None,
        line: None,
        offset: None,
        inlined: false,
        unknown: Some(format!("beyond the {MAX_SAMPLES} largest")),
    }
}

fn unknown_stack() -> SymbolizedStack {
    SymbolizedStack {
        frames: vec![Frame {
            unknown: Some("stack not symbolized".to_owned()),
            function: Frame::UNKNOWN_FUNCTION.to_owned(),
            ..other_frame()
        }],
        truncated: true,
    }
}

/// `window` as a gzipped profile.proto; `stacks` holds every stack it uses.
pub fn encode(
    window: &ProcessWindow,
    stacks: &HashMap<StackId, SymbolizedStack>,
    period: u64,
) -> io::Result<Vec<u8>> {
    // Stacks that read the same are one sample.
    let mut index: HashMap<Vec<String>, usize> = HashMap::new();
    let mut rows: Vec<(Vec<Frame>, Values)> = Vec::new();
    let unknown = unknown_stack();
    for row in &window.rows {
        let stack = stacks.get(&row.stack).unwrap_or(&unknown);
        let key: Vec<String> = stack.frames.iter().map(Frame::place).collect();
        let i = *index.entry(key).or_insert_with(|| {
            rows.push((stack.frames.clone(), [0; 4]));
            rows.len() - 1
        });
        let v = &mut rows[i].1;
        v[0] += row.allocated.count as i64;
        v[1] += row.allocated.bytes as i64;
        v[2] += row.live.count as i64;
        v[3] += row.live.bytes as i64;
    }
    if rows.len() > MAX_SAMPLES {
        rows.sort_by_key(|(_, v)| std::cmp::Reverse(v[1] + v[3]));
        let mut other = [0i64; 4];
        for (_, v) in rows.drain(MAX_SAMPLES - 1..) {
            for k in 0..4 {
                other[k] += v[k];
            }
        }
        rows.push((vec![other_frame()], other));
    }
    let mut b = Builder::memory();
    b.profile.period_type = Some(ValueType {
        r#type: b.string("space"),
        unit: b.string("bytes"),
    });
    b.profile.period = period.max(1) as i64;
    b.profile.default_sample_type = b.string("inuse_space");
    b.profile.time_nanos = window.start_unix_ns as i64;
    b.profile.duration_nanos = window.end_unix_ns.saturating_sub(window.start_unix_ns) as i64;
    for (frames, value) in rows {
        let location_id = frames.iter().map(|f| b.location(f)).collect();
        b.profile.sample.push(Sample {
            location_id,
            value: value.to_vec(),
            label: Vec::new(),
        });
    }
    gzip(&b.profile)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::report::render::pprof::Profile;

    fn frame(name: &str) -> Frame {
        Frame {
            kind: FrameKind::Python,
            function: name.into(),
            module: "python3.11".into(),
            file: Some("app.py".into()),
            line: Some(3),
            offset: None,
            inlined: false,
            unknown: None,
        }
    }

    fn decode(gz: &[u8]) -> Profile {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut raw).expect("gz");
        Profile::decode(&raw[..]).expect("decode")
    }

    #[test]
    fn windows_carry_deltas_and_live_and_merge_equal_stacks() {
        let row = |id, bytes, live| WindowRow {
            stack: StackId(id),
            allocated: Amount { bytes, count: 1 },
            live: Amount {
                bytes: live,
                count: u64::from(live > 0),
            },
        };
        let window = ProcessWindow {
            pid: 1,
            labels: Default::default(),
            start_unix_ns: 1_000_000_000,
            end_unix_ns: 16_000_000_000,
            rows: vec![row(1, 100, 100), row(2, 50, 0), row(3, 7, 0)],
        };
        let stacks = HashMap::from([
            (
                StackId(1),
                SymbolizedStack {
                    frames: vec![frame("leak")],
                    truncated: false,
                },
            ),
            (
                StackId(2),
                SymbolizedStack {
                    frames: vec![frame("leak")],
                    truncated: false,
                },
            ),
        ]);
        let p = decode(&encode(&window, &stacks, 262_144).expect("encode"));
        assert_eq!(p.sample.len(), 2, "stacks 1 and 2 read the same");
        assert_eq!(p.sample[0].value, [2, 150, 1, 100]);
        assert_eq!(p.time_nanos, 1_000_000_000);
        assert_eq!(p.duration_nanos, 15_000_000_000);
        assert_eq!(p.period, 262_144);
        let pt = p.period_type.expect("period type");
        assert_eq!(p.string_table[pt.r#type as usize], "space");
        assert_eq!(p.string_table[pt.unit as usize], "bytes");
        // Stack 3 was never symbolized: it says so.
        assert_eq!(p.sample[1].value, [1, 7, 0, 0]);
    }

    #[test]
    fn too_many_stacks_end_in_one_other_sample_with_exact_totals() {
        let rows: Vec<WindowRow> = (0..MAX_SAMPLES as u32 + 10)
            .map(|i| WindowRow {
                stack: StackId(i),
                allocated: Amount {
                    bytes: u64::from(i) + 1,
                    count: 1,
                },
                live: Amount::default(),
            })
            .collect();
        let total: i64 = rows.iter().map(|r| r.allocated.bytes as i64).sum();
        let stacks = rows
            .iter()
            .map(|r| {
                (
                    r.stack,
                    SymbolizedStack {
                        frames: vec![frame(&format!("f{}", r.stack.0))],
                        truncated: false,
                    },
                )
            })
            .collect();
        let window = ProcessWindow {
            pid: 1,
            labels: Default::default(),
            start_unix_ns: 0,
            end_unix_ns: 1,
            rows,
        };
        let p = decode(&encode(&window, &stacks, 1).expect("encode"));
        assert_eq!(p.sample.len(), MAX_SAMPLES);
        assert_eq!(p.sample.iter().map(|s| s.value[1]).sum::<i64>(), total);
    }
}
