//! Any bytes given to the capture reader (header, zstd frames, records),
//! and what it reads from them given to the reports: an error or a
//! report, never a crash.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::{capture, report, report::replay::Temporary, symbolize::View};

fuzz_target!(|data: &[u8]| {
    let (records, _error) = capture::read(data);
    let contents = capture::Contents::new(records);
    let report = report::from_capture(&contents, View::Mixed, 0, Temporary::Within { ns: 1_000_000 });
    let _ = report::json::render(&report, 10);
    let _ = report::text::render(&report, 10);
});
