//! The capture reader's fuzz targets (fuzz/), each run for a bounded time
//! by `cargo xtask test`, seeded with the capture the report tests just
//! recorded. A crash fails the test task; libFuzzer keeps the input that
//! caused it in fuzz/artifacts.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::check;

/// Per target: long enough to get past the seed's prefixes into mutated
/// records, short enough for CI.
const SECONDS_PER_TARGET: u32 = 60;
/// Inputs up to this size: a few hundred records, thousands of runs a
/// minute.
const MAX_LEN: u32 = 64 * 1024;

/// The capture the report tests leave (tests/tests/reports.rs).
const SEED: &str = "target/test-output/reports/recording/capture.tracer";

pub fn run(root: &Path, nightly: &str) -> Result<()> {
    let seed = fs::read(root.join(SEED))
        .with_context(|| format!("reading {SEED}: the report tests make it"))?;
    let corpus = root.join("fuzz/corpus");
    // capture_read takes whole files; capture_records the record stream
    // inside one (after the 10-byte header, decompressed).
    let records = zstd::decode_all(seed.get(10..).unwrap_or_default())
        .context("decompressing the seed capture")?;
    for (target, input) in [("capture_read", &seed), ("capture_records", &records)] {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("seed"), input)?;
        eprintln!("xtask: fuzzing {target} for {SECONDS_PER_TARGET} s");
        check(
            Command::new("rustup")
                .args(["run", nightly, "cargo", "fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={SECONDS_PER_TARGET}"))
                .arg(format!("-max_len={MAX_LEN}"))
                .current_dir(root.join("fuzz")),
        )?;
    }
    Ok(())
}
