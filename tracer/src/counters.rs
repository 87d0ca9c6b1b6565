//! Counters of what could not be recorded or matched: the kernel's (indices
//! and names from `tracer_common::counter`), then tracer's own. One table,
//! one name per counter, from the kernel's map to report.json.

use std::fmt;

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{MapAccess, Visitor},
    ser::SerializeMap as _,
};
use tracer_common::counter;

const KERNEL: usize = counter::COUNT as usize;

/// Records too short for their kind: a tracer bug if ever non-zero.
pub const MALFORMED_RECORDS: u32 = counter::COUNT;
/// Frees (and reallocs) of addresses never seen allocated.
pub const UNMATCHED_FREES: u32 = counter::COUNT + 1;
/// Allocations returned at an address still live: a free was not seen.
pub const IMPLIED_FREES: u32 = counter::COUNT + 2;
/// Unmaps of ranges never seen mapped (allocator-internal or file mappings).
pub const UNMATCHED_UNMAPS: u32 = counter::COUNT + 3;
/// Reported stacks that could not be unwound to their root.
pub const TRUNCATED_STACKS: u32 = counter::COUNT + 4;
/// Allocations whose stack was not kept: their process made more distinct
/// stacks than tracer keeps of one process (`model::stacks`).
pub const STACKS_OVER_LIMIT: u32 = counter::COUNT + 5;

const OWN_NAMES: [&str; 6] = [
    "malformed_records",
    "unmatched_frees",
    "implied_frees",
    "unmatched_unmaps",
    "truncated_stacks",
    "stacks_over_limit",
];
const LEN: usize = KERNEL + OWN_NAMES.len();

const fn names() -> [&'static str; LEN] {
    let mut all = [""; LEN];
    let mut i = 0;
    while i < LEN {
        all[i] = if i < KERNEL {
            counter::NAMES[i]
        } else {
            OWN_NAMES[i - KERNEL]
        };
        i += 1;
    }
    all
}

/// Every counter's name, by index.
pub const NAMES: [&str; LEN] = names();

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    values: [u64; LEN],
}

impl Default for Counters {
    fn default() -> Self {
        Self { values: [0; LEN] }
    }
}

impl Counters {
    /// The kernel's counters, summed over CPUs, by `tracer_common::counter` index.
    pub fn from_kernel(kernel: [u64; KERNEL]) -> Self {
        let mut c = Self::default();
        c.values[..KERNEL].copy_from_slice(&kernel);
        c
    }

    /// The counter at `index` (a `tracer_common::counter` or one of this
    /// module's constants); 0 for an index that names none.
    pub fn get(&self, index: u32) -> u64 {
        self.values.get(index as usize).copied().unwrap_or(0)
    }

    pub fn add(&mut self, index: u32, n: u64) {
        if let Some(v) = self.values.get_mut(index as usize) {
            *v = v.saturating_add(n);
        }
    }

    pub fn set(&mut self, index: u32, n: u64) {
        if let Some(v) = self.values.get_mut(index as usize) {
            *v = n;
        }
    }

    /// (name, value) of every counter, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        NAMES.iter().copied().zip(self.values.iter().copied())
    }
}

impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A map of name to value: report.json's `counters` and the capture's.
impl Serialize for Counters {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(LEN))?;
        for (name, value) in self.iter() {
            map.serialize_entry(name, &value)?;
        }
        map.end()
    }
}

/// Names this tracer does not know (a newer capture's) are skipped.
impl<'de> Deserialize<'de> for Counters {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> Visitor<'de> for Names {
            type Value = Counters;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of counter names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Counters, A::Error> {
                let mut c = Counters::default();
                while let Some((name, value)) = map.next_entry::<String, u64>()? {
                    if let Some(i) = NAMES.iter().position(|n| *n == name) {
                        c.values[i] = value;
                    }
                }
                Ok(c)
            }
        }
        deserializer.deserialize_map(Names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_kernel_indices() {
        assert_eq!(NAMES[counter::LOST_EVENTS as usize], "lost_events");
        assert_eq!(NAMES[counter::IN_FLIGHT_FULL as usize], "in_flight_full");
        assert_eq!(NAMES[UNMATCHED_FREES as usize], "unmatched_frees");
        let mut unique = NAMES.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), LEN, "one name per counter");
    }

    #[test]
    fn round_trips_as_a_map() {
        let mut kernel = [0; KERNEL];
        kernel[counter::LOST_EVENTS as usize] = 3;
        let mut c = Counters::from_kernel(kernel);
        c.add(UNMATCHED_FREES, 2);
        let json = serde_json::to_value(c).expect("json");
        assert_eq!(json["lost_events"], 3);
        assert_eq!(json["unmatched_frees"], 2);
        let back: Counters = serde_json::from_value(json).expect("back");
        assert_eq!(back, c);
        let bytes = postcard::to_stdvec(&c).expect("postcard");
        assert_eq!(postcard::from_bytes::<Counters>(&bytes).expect("back"), c);
    }
}
