//! obmalloc's arenas read from outside: the arena table (`arenas`,
//! `maxarenas`), then each arena in one read, its pools parsed here. A
//! pool (`struct pool_header`, 48 bytes) serves one size class; its used
//! blocks are those below `nextoffset` that are not on its free list.
//! Every header is checked before it is believed: a size class below 32,
//! `maxnextoffset` that of the class, a free list that stays inside the
//! pool on block boundaries and ends within the pool's capacity.

use super::{layout::HeapLayout, objects::word};
use crate::python::memory::{Memory, ReadError};

/// `sizeof(struct arena_object)`.
const ARENA_OBJECT: u64 = 48;
/// `POOL_OVERHEAD`: the pool header rounded up to 16.
const POOL_OVERHEAD: u64 = 48;
/// Blocks are multiples of 16 bytes, up to 512 (32 size classes).
const ALIGNMENT: u64 = 16;
const SIZE_CLASSES: u64 = 32;
/// The largest arena table read: 64k arenas are 64 GiB of small objects.
const MAX_ARENAS: u64 = 1 << 16;

/// One arena in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arena {
    pub address: u64,
    /// Pools below this have been carved out of the arena.
    pub pool_address: u64,
    /// Pools in use (`ntotalpools - nfreepools`).
    pub used_pools: u64,
}

impl Arena {
    /// The first pool: the arena's address rounded up to a pool.
    pub fn first_pool(&self, layout: &HeapLayout) -> u64 {
        self.address.next_multiple_of(layout.pool_size)
    }

    pub fn contains(&self, addr: u64, layout: &HeapLayout) -> bool {
        (self.address..self.address + layout.arena_size).contains(&addr)
    }
}

/// The arenas in use, from the table at `arenas_at` (a pointer to
/// `struct arena_object[maxarenas]`) with its length at `maxarenas_at`;
/// an error says why the table is not one.
pub fn read_table(
    memory: &Memory,
    layout: &HeapLayout,
    maxarenas_at: u64,
    arenas_at: u64,
) -> Result<Vec<Arena>, String> {
    let e = |err: ReadError| err.to_string();
    let max = u64::from(memory.u32(maxarenas_at).map_err(e)?);
    let table = memory.u64(arenas_at).map_err(e)?;
    // The table starts at 16 entries and doubles.
    if max == 0 || !max.is_multiple_of(16) || max > MAX_ARENAS {
        return Err(format!("maxarenas is {max}"));
    }
    if table == 0 || !table.is_multiple_of(8) {
        return Err(format!("the arena table is at {table:#x}"));
    }
    let raw = memory
        .read(table, (max * ARENA_OBJECT) as usize)
        .map_err(e)?;
    let max_pools = layout.arena_size / layout.pool_size;
    let mut arenas = Vec::new();
    for entry in raw.chunks_exact(ARENA_OBJECT as usize) {
        let address = word(entry, 0);
        if address == 0 {
            continue;
        }
        let pool_address = word(entry, 8);
        let free = u64::from(word(entry, 16) as u32);
        let total = word(entry, 16) >> 32;
        let inside = (address..=address + layout.arena_size).contains(&pool_address);
        if !inside || free > total || total > max_pools {
            return Err(format!(
                "arena at {address:#x}: pools to {pool_address:#x}, {free} of {total} free"
            ));
        }
        arenas.push(Arena {
            address,
            pool_address,
            used_pools: total - free,
        });
    }
    Ok(arenas)
}

/// What walking arenas saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    pub blocks: u64,
    pub used_pools: u64,
    pub bytes_read: u64,
    pub reads: u64,
}

/// Hands every used block of `arena` to `each` (its address, its size
/// class, its bytes), reading the arena in one call into `buf`.
pub fn walk(
    memory: &Memory,
    layout: &HeapLayout,
    arena: &Arena,
    buf: &mut Vec<u8>,
    each: &mut dyn FnMut(u64, u64, &[u8]),
) -> Result<ArenaStats, ReadError> {
    let first = arena.first_pool(layout);
    let len = arena.pool_address.saturating_sub(first);
    buf.clear();
    buf.resize(len as usize, 0);
    memory.read_into(first, buf)?;
    let mut stats = ArenaStats {
        bytes_read: len,
        reads: 1,
        ..ArenaStats::default()
    };
    for (i, pool) in buf.chunks_exact(layout.pool_size as usize).enumerate() {
        let at = first + i as u64 * layout.pool_size;
        let used = used_blocks(pool, at, layout.pool_size);
        if let Some(used) = used {
            stats.used_pools += 1;
            for (offset, size) in used {
                stats.blocks += 1;
                let block = &pool[offset as usize..(offset + size) as usize];
                each(at + offset, size, block);
            }
        }
    }
    Ok(stats)
}

/// The used blocks of the pool whose bytes are `pool` (at `at` in the
/// process): (offset in the pool, size). `None` for a pool not in use or
/// whose header is not a pool's.
fn used_blocks(pool: &[u8], at: u64, pool_size: u64) -> Option<Vec<(u64, u64)>> {
    let count = word(pool, 0) as u32;
    if count == 0 {
        return None;
    }
    let szidx = word(pool, 32) >> 32;
    let nextoffset = word(pool, 40) & 0xffff_ffff;
    let maxnextoffset = word(pool, 40) >> 32;
    if szidx >= SIZE_CLASSES {
        return None;
    }
    let size = (szidx + 1) * ALIGNMENT;
    if maxnextoffset != pool_size - size
        || nextoffset < POOL_OVERHEAD
        || nextoffset > maxnextoffset + size
    {
        return None;
    }
    let carved = (nextoffset - POOL_OVERHEAD) / size;
    let capacity = (pool_size - POOL_OVERHEAD) / size;
    let mut free = vec![false; carved as usize];
    let mut next = word(pool, 8);
    for _ in 0..=capacity {
        if next == 0 {
            break;
        }
        let Some(offset) = next.checked_sub(at) else {
            break;
        };
        if offset < POOL_OVERHEAD
            || offset >= nextoffset
            || !(offset - POOL_OVERHEAD).is_multiple_of(size)
        {
            break;
        }
        let k = ((offset - POOL_OVERHEAD) / size) as usize;
        if std::mem::replace(&mut free[k], true) {
            // A cycle: the list was being changed as it was read.
            break;
        }
        next = word(pool, offset as usize);
    }
    Some(
        (0..carved)
            .filter(|&k| !free[k as usize])
            .map(|k| (POOL_OVERHEAD + k * size, size))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 KiB pool of 64-byte blocks at `at`: blocks 0 to 4 carved, 1
    /// and 3 freed (3 first on the list), block 5 the next virgin one.
    fn pool(at: u64) -> Vec<u8> {
        let mut p = vec![0u8; 4096];
        let put = |p: &mut Vec<u8>, off: usize, v: u64| {
            p[off..off + 8].copy_from_slice(&v.to_le_bytes());
        };
        put(&mut p, 0, 3); // count
        put(&mut p, 8, at + 48 + 3 * 64); // freeblock
        put(&mut p, 32, 3 << 32); // arenaindex 0, szidx 3 (64 bytes)
        put(&mut p, 40, ((4096 - 64) << 32) | (48 + 5 * 64)); // nextoffset, maxnextoffset
        put(&mut p, 48 + 3 * 64, at + 48 + 64);
        put(&mut p, 48 + 64, 0);
        p
    }

    #[test]
    fn used_blocks_skip_the_free_list() {
        let at = 0x7000_0000;
        let used = used_blocks(&pool(at), at, 4096).expect("a pool");
        assert_eq!(used, [(48, 64), (48 + 128, 64), (48 + 256, 64)]);
    }

    #[test]
    fn bad_headers_and_cycles_are_not_believed() {
        let at = 0x7000_0000;
        let mut p = pool(at);
        p[36] = 40; // szidx 40: no such class
        assert_eq!(used_blocks(&p, at, 4096), None);
        let mut p = pool(at);
        p[0] = 0; // count 0: an empty pool
        assert_eq!(used_blocks(&p, at, 4096), None);
        // A free list that points back at itself ends there.
        let mut p = pool(at);
        let own = (at + 48 + 3 * 64).to_le_bytes();
        p[48 + 3 * 64..48 + 3 * 64 + 8].copy_from_slice(&own);
        let used = used_blocks(&p, at, 4096).expect("a pool");
        assert_eq!(used.len(), 4);
        // A free pointer outside the pool ends the list too.
        let mut p = pool(at);
        p[8..16].copy_from_slice(&0x10u64.to_le_bytes());
        assert_eq!(used_blocks(&p, at, 4096).map(|u| u.len()), Some(5));
    }

    #[test]
    fn reads_an_arena_table_in_this_process() {
        let layout = HeapLayout::for_version(9).expect("3.9");
        // Two arenas of 256 KiB, one slot unused.
        let mut table = vec![0u64; 16 * 6];
        table[0] = 0x7f00_0000_0000;
        table[1] = 0x7f00_0000_0000 + 8192;
        table[2] = 60 | (64 << 32); // 60 of 64 pools free
        table[12] = 0x7f00_0010_0000;
        table[13] = 0x7f00_0010_0000 + 4096;
        table[14] = 63 | (64 << 32);
        let max: u32 = 16;
        let ptr = table.as_ptr() as u64;
        let memory = Memory::new(std::process::id());
        let at = |v: &u64| v as *const u64 as u64;
        let arenas =
            read_table(&memory, &layout, &max as *const u32 as u64, at(&ptr)).expect("a table");
        assert_eq!(arenas.len(), 2);
        assert_eq!(arenas[0].used_pools, 4);
        assert!(arenas[1].contains(0x7f00_0010_0000 + 5, &layout));
        let bad: u32 = 17;
        assert!(read_table(&memory, &layout, &bad as *const u32 as u64, at(&ptr)).is_err());
        table[1] = 0x7f00_1000_0000; // pools beyond the arena
        assert!(read_table(&memory, &layout, &max as *const u32 as u64, at(&ptr)).is_err());
    }
}
