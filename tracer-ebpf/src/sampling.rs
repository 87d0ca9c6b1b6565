//! Which allocation calls `--sample-bytes` records: docs/allocation-matching.md,
//! "With `--sample-bytes`". Userspace fills the gap table and weighs each
//! sample (tracer's sampling.rs).

use tracer_common::sampling;

use crate::maps::{GAP_TABLE, SAMPLE_LEFT};

/// Whether an allocation call of `size` bytes is sampled: a point of the
/// Poisson process over allocated bytes (mean gap `mean`) falls in it.
#[inline(always)]
pub fn sampled(mean: u64, size: u64) -> bool {
    let Some(left) = SAMPLE_LEFT.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a per-CPU slot, touched only by this CPU with preemption off.
    let left = unsafe { &mut *left };
    let draw = || {
        // SAFETY: no preconditions.
        let r = unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() };
        let gap = GAP_TABLE
            .get(r & (sampling::GAP_TABLE_LEN as u32 - 1))
            .copied()
            .unwrap_or(1 << sampling::GAP_SCALE_BITS);
        (mean.wrapping_mul(u64::from(gap)) >> sampling::GAP_SCALE_BITS) as i64
    };
    if *left == 0 {
        *left = draw().max(1);
    }
    *left -= size as i64;
    if *left > 0 {
        return false;
    }
    *left = draw().max(1);
    true
}
