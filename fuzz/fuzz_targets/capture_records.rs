//! Any record stream, in a well-formed capture (so that the fuzzer's
//! changes reach the record decoder rather than zstd's checks), read and
//! given to the reports: an error or a report, never a crash.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::{capture, report, report::replay::Temporary, symbolize::View};

fuzz_target!(|records: &[u8]| {
    let mut file = capture::MAGIC.to_vec();
    file.extend_from_slice(&capture::VERSION.to_le_bytes());
    file.extend(zstd::encode_all(records, 1).expect("compress"));
    let (records, _error) = capture::read(&file[..]);
    let contents = capture::Contents::new(records);
    for rule in [Temporary::Within { ns: 1_000_000 }, Temporary::BeforeAllocations(2)] {
        let report = report::from_capture(&contents, View::Mixed, 1_000, rule);
        let _ = report::json::render(&report, 10);
        let _ = report::text::render(&report, 10);
        let _ = report::pprof::render(&report.hotspots, &report.leaks, 1);
    }
});
