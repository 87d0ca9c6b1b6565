//! A heap walk as a gzipped pprof profile, the daemon's `types` profile:
//! one sample per type, its one frame named for the type, its values the
//! live objects (`type_objects`/count) and the bytes they occupy
//! (`types`/bytes, the default). The sample types are named so that
//! Pyroscope's /ingest, which names a pprof's series after its sample
//! types (`memory` when one is alloc_*, inuse_*, `space` or `objects`,
//! else the last one's name), keeps it apart from the memory windows as
//! `types`; Parca is told `__name__=types`. A walk is an instant: no
//! duration (Parca would take it for a delta profile). At most
//! `MAX_SAMPLES` samples, the smallest types beyond that added up in one
//! `[other types]` sample, so that totals stay exact.

use std::io;

use super::window_pprof::MAX_SAMPLES;
use crate::{
    census::TypeCount,
    frame::{Frame, FrameKind, clip},
    report::render::pprof::{Builder, Sample, ValueType, gzip},
};

/// The sample types, in the order of each sample's values.
pub const SAMPLE_TYPES: [(&str, &str); 2] = [("type_objects", "count"), ("types", "bytes")];

fn type_frame(name: &str) -> Frame {
    Frame::named(FrameKind::Python, clip(name.to_owned()))
}

/// `types` (most bytes first, as a census lists them) walked at
/// `at_unix_ns`, as a gzipped profile.proto.
pub fn encode(types: &[TypeCount], at_unix_ns: u64) -> io::Result<Vec<u8>> {
    let mut b = Builder::with_sample_types(&SAMPLE_TYPES);
    b.profile.period_type = Some(ValueType {
        r#type: b.string("objects"),
        unit: b.string("count"),
    });
    // Every object walked is counted (an estimate past the walk's caps).
    b.profile.period = 1;
    b.profile.default_sample_type = b.string("types");
    b.profile.time_nanos = at_unix_ns as i64;
    let value = |t: &TypeCount| vec![t.count as i64, t.bytes as i64];
    let (kept, rest) = types.split_at(types.len().min(MAX_SAMPLES - 1));
    for t in kept {
        let location = b.location(&type_frame(&t.name));
        b.profile.sample.push(Sample {
            location_id: vec![location],
            value: value(t),
            label: Vec::new(),
        });
    }
    if !rest.is_empty() {
        let other = TypeCount {
            name: "[other types]".to_owned(),
            count: rest.iter().map(|t| t.count).sum(),
            bytes: rest.iter().map(|t| t.bytes).sum(),
        };
        let location = b.location(&type_frame(&other.name));
        b.profile.sample.push(Sample {
            location_id: vec![location],
            value: value(&other),
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

    fn decode(gz: &[u8]) -> Profile {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut raw).expect("gz");
        Profile::decode(&raw[..]).expect("decode")
    }

    fn t(name: &str, count: u64, bytes: u64) -> TypeCount {
        TypeCount::new(name, count, bytes)
    }

    /// The function name of a sample's one frame.
    fn frame_of(p: &Profile, s: &Sample) -> String {
        assert_eq!(s.location_id.len(), 1);
        let loc = &p.location[s.location_id[0] as usize - 1];
        let f = &p.function[loc.line[0].function_id as usize - 1];
        p.string_table[f.name as usize].clone()
    }

    #[test]
    fn one_sample_per_type_named_for_it() {
        let types = [t("bytes", 5000, 10_405_000), t("Session", 5000, 280_000)];
        let p = decode(&encode(&types, 1_700_000_000_000_000_000).expect("encode"));
        let names: Vec<&str> = p
            .sample_type
            .iter()
            .map(|st| p.string_table[st.r#type as usize].as_str())
            .collect();
        // Pyroscope's series name: the last sample type's, none of them a
        // memory one.
        assert_eq!(names, ["type_objects", "types"]);
        assert!(
            names
                .iter()
                .all(|n| !n.contains("alloc_") && !n.contains("inuse_") && *n != "objects")
        );
        assert_eq!(p.string_table[p.default_sample_type as usize], "types");
        assert_eq!(p.sample.len(), 2);
        assert_eq!(frame_of(&p, &p.sample[1]), "Session");
        assert_eq!(p.sample[1].value, [5000, 280_000]);
        assert_eq!(p.time_nanos, 1_700_000_000_000_000_000);
        assert_eq!(p.duration_nanos, 0);
    }

    #[test]
    fn too_many_types_end_in_one_other_sample_with_exact_totals() {
        let types: Vec<TypeCount> = (0..MAX_SAMPLES as u64 + 5)
            .map(|i| t(&format!("T{i}"), 1, 1000 - i % 1000))
            .collect();
        let p = decode(&encode(&types, 1).expect("encode"));
        assert_eq!(p.sample.len(), MAX_SAMPLES);
        let total: i64 = types.iter().map(|t| t.bytes as i64).sum();
        assert_eq!(p.sample.iter().map(|s| s.value[1]).sum::<i64>(), total);
        assert_eq!(
            p.sample.iter().map(|s| s.value[0]).sum::<i64>(),
            types.len() as i64
        );
        assert_eq!(
            frame_of(&p, p.sample.last().expect("other")),
            "[other types]"
        );
    }
}
