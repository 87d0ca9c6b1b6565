//! The cyclic GC's generation lists read from outside: every object a
//! generation tracks is on its circular doubly linked list of `PyGC_Head`s
//! (`_gc_next`, `_gc_prev`; flags in their low bits), the object right
//! after its head. One read per object gives the link and the object's
//! header. The walk is bounded (a cap, a deadline), and stops where the
//! list does not read as one (a next whose previous is not the current
//! head: the process changed it meanwhile).

use std::time::Instant;

use super::{
    layout::{GENERATION_SIZE, HeapLayout},
    objects::word,
};
use crate::python::memory::Memory;

/// Low bits of the links that hold flags (collecting, old space).
const FLAG_BITS: u64 = 3;
/// Bytes read per object: the GC head, then `ob_refcnt`, `ob_type` and
/// `ob_size`.
pub const OBJECT_READ: usize = 40;

/// Whether `head` is the head of a circular list: its next's previous is
/// itself (or the list is empty).
fn is_list_head(memory: &Memory, head: u64) -> bool {
    let (Ok(next), Ok(prev)) = (memory.u64(head), memory.u64(head + 8)) else {
        return false;
    };
    let (next, prev) = (next & !FLAG_BITS, prev & !FLAG_BITS);
    if next == head || prev == head {
        return next == prev;
    }
    memory
        .u64(next + 8)
        .is_ok_and(|back| back & !FLAG_BITS == head)
}

/// The list heads of the generations (three, then the permanent one) of
/// the GC state at `state`: at the first candidate offset where all three
/// read as list heads.
pub fn list_heads(memory: &Memory, layout: &HeapLayout, state: u64) -> Result<Vec<u64>, String> {
    for &at in layout.generations {
        let heads: Vec<u64> = (0..3).map(|g| state + at + g * GENERATION_SIZE).collect();
        if heads.iter().all(|&h| is_list_head(memory, h)) {
            let mut heads = heads;
            let permanent = state + layout.permanent(at);
            if is_list_head(memory, permanent) {
                heads.push(permanent);
            }
            return Ok(heads);
        }
    }
    Err(format!(
        "no GC generation lists at the offsets known for 3.{} in the GC state at {state:#x}",
        layout.minor
    ))
}

/// What walking one list saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListWalk {
    pub objects: u64,
    pub reads: u64,
    /// It ended at its head (not at a cap, the deadline or a bad link).
    pub complete: bool,
}

/// Hands each object of the list at `head` to `each` (its GC head's
/// address and the `OBJECT_READ` bytes there), up to `cap` objects.
pub fn walk_list(
    memory: &Memory,
    head: u64,
    cap: u64,
    deadline: Instant,
    each: &mut dyn FnMut(u64, &[u8]),
) -> ListWalk {
    let mut walk = ListWalk::default();
    let Ok(first) = memory.u64(head) else {
        return walk;
    };
    walk.reads += 1;
    let mut prev = head;
    let mut at = first & !FLAG_BITS;
    let mut buf = [0u8; OBJECT_READ];
    while walk.objects < cap {
        if at == head {
            walk.complete = true;
            break;
        }
        if at == 0
            || !at.is_multiple_of(8)
            || walk.objects % 4096 == 4095 && Instant::now() > deadline
        {
            break;
        }
        walk.reads += 1;
        if memory.read_into(at, &mut buf).is_err() || word(&buf, 8) & !FLAG_BITS != prev {
            break;
        }
        walk.objects += 1;
        each(at, &buf);
        prev = at;
        at = word(&buf, 0) & !FLAG_BITS;
    }
    walk
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GC list in this process: a head and `n` objects, linked both ways.
    fn list(n: usize) -> Vec<[u64; 5]> {
        let mut nodes = vec![[0u64; 5]; n + 1];
        let base = nodes.as_ptr() as u64;
        let addr = |i: usize| base + (i * 40) as u64;
        for (i, node) in nodes.iter_mut().enumerate() {
            node[0] = addr((i + 1) % (n + 1));
            node[1] = addr((i + n) % (n + 1)) | 1; // a flag bit in prev
            node[3] = 0xabc0 + i as u64;
        }
        nodes
    }

    #[test]
    fn walks_a_list_to_its_head() {
        let nodes = list(5);
        let memory = Memory::new(std::process::id());
        let head = nodes.as_ptr() as u64;
        assert!(is_list_head(&memory, head));
        let mut types = Vec::new();
        let far = Instant::now() + std::time::Duration::from_secs(5);
        let walk = walk_list(&memory, head, 100, far, &mut |_, b| types.push(word(b, 24)));
        assert!(walk.complete);
        assert_eq!(walk.objects, 5);
        assert_eq!(types, [0xabc1, 0xabc2, 0xabc3, 0xabc4, 0xabc5]);
        // A cap stops it, incomplete.
        let walk = walk_list(&memory, head, 3, far, &mut |_, _| {});
        assert_eq!((walk.objects, walk.complete), (3, false));
    }

    #[test]
    fn a_broken_link_ends_the_walk() {
        let mut nodes = list(5);
        nodes[3][1] = 0x1000; // node 3 does not point back at node 2
        let memory = Memory::new(std::process::id());
        let head = nodes.as_ptr() as u64;
        let far = Instant::now() + std::time::Duration::from_secs(5);
        let walk = walk_list(&memory, head, 100, far, &mut |_, _| {});
        assert_eq!((walk.objects, walk.complete), (2, false));
        let mut empty = [0u64; 2];
        let at = empty.as_ptr() as u64;
        empty[0] = at;
        empty[1] = at;
        // Read through the other process's view: keep the stores.
        std::hint::black_box(&empty);
        assert!(is_list_head(&memory, at));
    }
}
