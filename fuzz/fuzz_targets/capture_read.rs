//! Any bytes given to the capture reader (header, zstd frames, records),
//! and what it reads from them given to the reports: an error or a
//! report, never a crash.

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

fuzz_target!(|data: &[u8]| {
    let (records, _error) = capture::read(data);
    let contents = capture::Contents::new(records);
    let report = analysis::analyze(
        &contents,
        &analysis::Options {
            view: View::Mixed,
            min_age_ns: 0,
            temporary: Temporary::Within { ns: 1_000_000 },
            include_thread_stacks: false,
        },
    );
    let options = render::Options {
        top: 10,
        of: Of::Leaks,
        sections: render::RECORD_SECTIONS.to_vec(),
    };
    let _ = render::render(&report, Format::Json, &options);
    let _ = render::render(&report, Format::Text, &options);
});
