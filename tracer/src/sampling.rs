//! Sampling by bytes (`--sample-bytes N`), as tcmalloc and jemalloc do: the
//! allocated bytes are a Poisson process with one sample point per N bytes
//! on average, and an allocation is recorded when a point falls in it. So
//! an allocation of `size` bytes is recorded with probability
//! p = 1 - exp(-size/N), and a recorded one stands for size/p bytes and 1/p
//! allocations, which keeps every total an unbiased estimate. Large
//! allocations are nearly always recorded, small ones rarely.
//!
//! The kernel keeps the distance to the next point per CPU and draws each
//! gap from `gap_table` (it has no floating point).

use tracer_common::sampling::{GAP_SCALE_BITS, GAP_TABLE_LEN};

/// What one recorded allocation stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weight {
    pub bytes: u64,
    pub count: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// N: the mean number of bytes between samples.
    pub mean_bytes: u64,
}

impl Sampling {
    /// The probability that an allocation of `size` bytes is recorded.
    pub fn probability(&self, size: u64) -> f64 {
        -(-(size as f64) / self.mean_bytes as f64).exp_m1()
    }

    /// The bytes and allocations a recorded allocation of `size` stands
    /// for. 1/p allocations is rarely a whole number: it is rounded up or
    /// down at random (`salt`: any value that varies between allocations,
    /// such as the address), so that counts stay unbiased too.
    pub fn weigh(&self, size: u64, salt: u64) -> Weight {
        let p = self.probability(size);
        if p <= 0.0 {
            return Weight {
                bytes: size,
                count: 1,
            };
        }
        let bytes = (size as f64 / p).round() as u64;
        let whole = (1.0 / p).floor();
        let fraction = 1.0 / p - whole;
        // splitmix64's finalizer: a well-spread uniform draw from the salt.
        let mut z = salt.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let uniform = (z >> 11) as f64 / (1u64 << 53) as f64;
        let count = whole + f64::from(u8::from(uniform < fraction));
        Weight {
            bytes,
            count: count.clamp(1.0, f64::from(u32::MAX)) as u32,
        }
    }

    /// Whether a process's note is the one `note` makes: its numbers
    /// are estimates.
    pub fn is_note(note: &str) -> bool {
        note.starts_with(NOTE_START)
    }

    /// What a report says of its numbers.
    pub fn note(&self) -> String {
        format!(
            "{NOTE_START} {}: one allocation sampled per {} bytes allocated on average; bytes and counts are estimates (relative error of a total of B bytes about sqrt({} / B))",
            self.mean_bytes, self.mean_bytes, self.mean_bytes
        )
    }
}

/// How `Sampling::note` begins.
const NOTE_START: &str = "--sample-bytes";

/// Gaps between sample points in units of N / 2^16: the quantile midpoints
/// of the unit exponential distribution, so that a uniformly chosen entry
/// is an exponential draw (mean 1 within 0.1%).
pub fn gap_table() -> [u32; GAP_TABLE_LEN] {
    let mut table = [0; GAP_TABLE_LEN];
    for (i, gap) in table.iter_mut().enumerate() {
        let u = (i as f64 + 0.5) / GAP_TABLE_LEN as f64;
        *gap = (-u.ln() * f64::from(1u32 << GAP_SCALE_BITS)).round() as u32;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_average_one_mean() {
        let table = gap_table();
        let mean = table.iter().map(|&g| f64::from(g)).sum::<f64>()
            / GAP_TABLE_LEN as f64
            / f64::from(1u32 << GAP_SCALE_BITS);
        assert!((mean - 1.0).abs() < 0.001, "mean gap {mean}");
    }

    #[test]
    fn weights_undo_the_sampling_probability() {
        let s = Sampling { mean_bytes: 65536 };
        // Much larger than N: nearly always recorded, stands for itself.
        assert_eq!(
            s.weigh(100 << 20, 7),
            Weight {
                bytes: 100 << 20,
                count: 1
            }
        );
        // Small: rarely recorded, stands for about N bytes.
        let Weight { bytes, count } = s.weigh(64, 7);
        assert!((65_500..=65_600).contains(&bytes), "{bytes}");
        assert!((1024..=1025).contains(&count), "{count}");
        // Expected recorded bytes equal the true bytes: p * weight == size.
        for size in [1u64, 100, 10_000, 65_536, 1 << 20] {
            let expected = s.probability(size) * s.weigh(size, 7).bytes as f64;
            assert!((expected - size as f64).abs() <= 0.5 + size as f64 * 1e-9);
        }
        // And counts, on average over allocations: p * mean count == 1.
        let size = 50_000;
        let mean = (0..100_000u64)
            .map(|addr| f64::from(s.weigh(size, addr * 16).count))
            .sum::<f64>()
            / 100_000.0;
        assert!((s.probability(size) * mean - 1.0).abs() < 0.01, "{mean}");
    }

    /// The kernel's decision rule (a per-CPU countdown refilled from the
    /// gap table), replayed here: the weighted total of what it records
    /// comes within 2% of the true total.
    #[test]
    fn countdown_sampling_estimates_totals() {
        let s = Sampling { mean_bytes: 4096 };
        let table = gap_table();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut left: i64 = 0;
        let (mut truth, mut estimate) = (0u64, 0u64);
        for i in 0..400_000u64 {
            let size = [16, 100, 700, 3000, 20_000][(i % 5) as usize];
            truth += size;
            left -= size as i64;
            if left <= 0 {
                let gap = u64::from(table[(next() as usize) % GAP_TABLE_LEN]);
                left = ((s.mean_bytes * gap) >> GAP_SCALE_BITS) as i64;
                estimate += s.weigh(size, i).bytes;
            }
        }
        let error = (estimate as f64 - truth as f64) / truth as f64;
        assert!(error.abs() < 0.02, "estimate off by {:.2}%", error * 100.0);
    }
}
