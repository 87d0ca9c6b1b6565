//! Any record stream, in a well-formed capture (so that the fuzzer's
//! changes reach the record decoder rather than zstd's checks), read and
//! given to the reports: an error or a report, never a crash.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::{
    capture,
    frame::View,
    report::{
        analysis::{self, Temporary},
        render::{self, Format, Of},
    },
};

fuzz_target!(|records: &[u8]| {
    let mut file = capture::MAGIC.to_vec();
    file.extend_from_slice(&capture::VERSION.to_le_bytes());
    file.extend(zstd::encode_all(records, 1).expect("compress"));
    let (records, _error) = capture::read(&file[..]);
    let contents = capture::Contents::new(records);
    for (temporary, include_thread_stacks) in [
        (Temporary::Within { ns: 1_000_000 }, false),
        (Temporary::BeforeAllocations(2), true),
    ] {
        let report = analysis::analyze(
            &contents,
            &analysis::Options {
                view: View::Mixed,
                min_age_ns: 1_000,
                temporary,
                include_thread_stacks,
            },
        );
        let options = render::Options {
            top: 10,
            of: Of::Leaks,
            sections: render::RECORD_SECTIONS.to_vec(),
        };
        for format in [Format::Json, Format::Text, Format::Pprof] {
            let _ = render::render(&report, format, &options);
        }
    }
});
