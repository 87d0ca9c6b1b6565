//! pprof's `profile.proto` (github.com/google/pprof/proto/profile.proto),
//! gzipped: the format Pyroscope, Parca and `go tool pprof` read. Four
//! sample types, as Go's heap profiles have them: alloc_objects/count,
//! alloc_space/bytes (the hotspots), inuse_objects/count, inuse_space/bytes
//! (the leaks). The messages are declared here with prost's derive, field
//! numbers as in profile.proto.

use std::{
    collections::HashMap,
    io::{self, Write as _},
};

use prost::Message;

use super::Options;
use crate::{frame::Frame, report::Report};

#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// Builds the tables of a profile: strings, functions, locations and
/// mappings are each stored once. Also builds the daemon's windows.
#[derive(Default)]
pub struct Builder {
    pub profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64>,
    locations: HashMap<String, u64>,
    mappings: HashMap<i64, u64>,
}

impl Builder {
    /// A memory profile's builder: the empty string first (pprof's rule),
    /// then the four sample types every memory profile tracer writes has,
    /// in the order of each sample's values.
    pub fn memory() -> Self {
        Self::with_sample_types(&[
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ])
    }

    /// A profile whose samples carry these values, as (type, unit).
    pub fn with_sample_types(types: &[(&str, &str)]) -> Self {
        let mut b = Self::default();
        b.string("");
        for (kind, unit) in types {
            let vt = ValueType {
                r#type: b.string(kind),
                unit: b.string(unit),
            };
            b.profile.sample_type.push(vt);
        }
        b
    }

    pub fn string(&mut self, s: &str) -> i64 {
        if let Some(i) = self.strings.get(s) {
            return *i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    pub fn location(&mut self, f: &Frame) -> u64 {
        let key = f.place();
        if let Some(id) = self.locations.get(&key) {
            return *id;
        }
        let name = self.string(&f.function);
        let filename = self.string(f.file.as_deref().unwrap_or(&f.module));
        let function = match self.functions.get(&(name, filename)) {
            Some(id) => *id,
            None => {
                let id = self.profile.function.len() as u64 + 1;
                self.profile.function.push(Function {
                    id,
                    name,
                    system_name: name,
                    filename,
                });
                self.functions.insert((name, filename), id);
                id
            }
        };
        let module = self.string(&f.module);
        let mapping = match self.mappings.get(&module) {
            Some(id) => *id,
            None => {
                let id = self.profile.mapping.len() as u64 + 1;
                self.profile.mapping.push(Mapping {
                    id,
                    filename: module,
                    has_functions: true,
                    has_filenames: true,
                    has_line_numbers: true,
                });
                self.mappings.insert(module, id);
                id
            }
        };
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id: mapping,
            address: f.offset.unwrap_or(0),
            line: vec![Line {
                function_id: function,
                line: i64::from(f.line.unwrap_or(0)),
            }],
        });
        self.locations.insert(key, id);
        id
    }
}

/// A gzipped profile of the hotspots (alloc_*) and leaks (inuse_*) of every
/// process, each sample labelled with its pid.
pub fn render(report: &Report, _options: &Options) -> io::Result<Vec<u8>> {
    let (hotspots, leaks) = (&report.hotspots, &report.leaks);
    let duration_ns = (report.duration_s * 1e9) as i64;
    let mut b = Builder::memory();
    b.profile.default_sample_type = b.string("inuse_space");
    b.profile.duration_nanos = duration_ns;
    let pid_key = b.string("pid");
    // One sample per (process, stack): allocated and still live together.
    let mut samples: HashMap<(u32, Vec<String>), usize> = HashMap::new();
    // alloc_* first, then inuse_*.
    for (entries, first) in [(hotspots, 0), (leaks, 2)] {
        for e in entries {
            let key = (e.pid, e.stack.iter().map(Frame::place).collect());
            let i = match samples.get(&key) {
                Some(i) => *i,
                None => {
                    let location_id = e.stack.iter().map(|f| b.location(f)).collect();
                    b.profile.sample.push(Sample {
                        location_id,
                        value: vec![0; 4],
                        label: vec![Label {
                            key: pid_key,
                            str: 0,
                            num: i64::from(crate::event::os_pid(e.pid)),
                        }],
                    });
                    samples.insert(key, b.profile.sample.len() - 1);
                    b.profile.sample.len() - 1
                }
            };
            let v = &mut b.profile.sample[i].value;
            v[first] += e.count as i64;
            v[first + 1] += e.bytes as i64;
        }
    }
    gzip(&b.profile)
}

/// `profile` encoded and gzipped, as profile.proto files are.
pub fn gzip(profile: &Profile) -> io::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&profile.encode_to_vec())?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{frame::FrameKind, report::Entry};

    #[test]
    fn samples_carry_alloc_and_inuse_values() {
        let frame = |name: &str| Frame {
            kind: FrameKind::Python,
            function: name.into(),
            module: "python3.11".into(),
            file: Some("app.py".into()),
            line: Some(9),
            offset: None,
            inlined: false,
            unknown: None,
        };
        let e = |bytes, count| Entry {
            pid: 3,
            bytes,
            count,
            stack: vec![frame("leaf"), frame("root")],
            truncated: false,
            types: vec![],
        };
        let mut report = crate::report::render::tests::report_of(&[e(300, 3)], "python3");
        report.hotspots = vec![e(1000, 10)];
        let gz = render(&report, &crate::report::render::tests::options()).expect("pprof");
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw)
            .expect("gunzip");
        let p = Profile::decode(&raw[..]).expect("decode");
        assert_eq!(p.sample.len(), 1);
        assert_eq!(p.sample[0].value, [10, 1000, 3, 300]);
        assert_eq!(p.sample[0].location_id.len(), 2);
        assert_eq!(p.function.len(), 2);
        assert_eq!(p.string_table[0], "");
        let leaf = &p.string_table[p.function[0].name as usize];
        assert_eq!(leaf, "leaf");
    }
}
