//! Line numbers from CPython line tables, per format:
//! `co_lnotab` (3.8, 3.9), the 3.10 `co_linetable`, and the location table
//! of 3.11+ (Objects/lnotab_notes.txt and Objects/locations.md in CPython).

/// The line of the instruction at byte offset `offset`, from a 3.8/3.9
/// `co_lnotab`: pairs of (unsigned byte increment, signed line increment).
pub fn lnotab(table: &[u8], firstlineno: i32, offset: u64) -> Option<u32> {
    let mut line = firstlineno;
    let mut addr: u64 = 0;
    for pair in table.chunks_exact(2) {
        addr += u64::from(pair[0]);
        if addr > offset {
            break;
        }
        line += i32::from(pair[1] as i8);
    }
    u32::try_from(line).ok()
}

/// The line of the instruction at byte offset `offset`, from a 3.10
/// `co_linetable`: pairs of (byte length of the range, signed line delta),
/// where a delta of -128 means the range has no line.
pub fn linetable_310(table: &[u8], firstlineno: i32, offset: u64) -> Option<u32> {
    let mut line = firstlineno;
    let mut start: u64 = 0;
    for pair in table.chunks_exact(2) {
        let end = start + u64::from(pair[0]);
        let delta = pair[1] as i8;
        if delta != -128 {
            line += i32::from(delta);
        }
        if start <= offset && offset < end {
            return if delta == -128 {
                None
            } else {
                u32::try_from(line).ok()
            };
        }
        start = end;
    }
    None
}

/// The line of the code unit at index `unit`, from a 3.11+ location table.
pub fn locations(table: &[u8], firstlineno: i32, unit: u64) -> Option<u32> {
    let mut line = firstlineno;
    let mut start: u64 = 0;
    let mut i = 0;
    while i < table.len() {
        let first = table[i];
        i += 1;
        if first & 0x80 == 0 {
            // Not the start of an entry: the table is corrupt.
            return None;
        }
        let code = (first >> 3) & 15;
        let end = start + u64::from(first & 7) + 1;
        let mut has_line = true;
        match code {
            15 => has_line = false,
            14 => {
                line += signed_varint(table, &mut i)?;
                for _ in 0..3 {
                    varint(table, &mut i)?;
                }
            }
            13 => line += signed_varint(table, &mut i)?,
            10..=12 => {
                line += i32::from(code) - 10;
                i += 2;
            }
            _ => i += 1,
        }
        if start <= unit && unit < end {
            return if has_line {
                u32::try_from(line).ok()
            } else {
                None
            };
        }
        start = end;
    }
    None
}

fn varint(table: &[u8], i: &mut usize) -> Option<u32> {
    let mut value: u32 = 0;
    let mut shift = 0;
    loop {
        let b = *table.get(*i)?;
        *i += 1;
        value |= u32::from(b & 63) << shift;
        if b & 64 == 0 {
            return Some(value);
        }
        shift += 6;
        if shift > 30 {
            return None;
        }
    }
}

fn signed_varint(table: &[u8], i: &mut usize) -> Option<i32> {
    let v = varint(table, i)?;
    Some(if v & 1 != 0 {
        -((v >> 1) as i32)
    } else {
        (v >> 1) as i32
    })
}

#[cfg(test)]
mod tests {
    //! Tables and (offset, line) pairs printed by each CPython for one
    //! function (`co_lines()`, `dis.findlinestarts`), every third point.

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    const POINTS_38_TO_310: [(u64, u32); 9] = [
        (0, 3),
        (6, 3),
        (12, 5),
        (18, 5),
        (24, 6),
        (30, 7),
        (36, 7),
        (42, 10),
        (48, 11),
    ];

    #[test]
    fn lnotab_38_39() {
        let table = hex("00010a020c010801040102ff06030201");
        for (offset, line) in POINTS_38_TO_310 {
            assert_eq!(lnotab(&table, 2, offset), Some(line), "offset {offset}");
        }
    }

    #[test]
    fn linetable_310_by_byte_offset() {
        let table = hex("0a010c0208010401020106ff04030801");
        for (offset, line) in POINTS_38_TO_310 {
            assert_eq!(
                linetable_310(&table, 2, offset),
                Some(line),
                "offset {offset}"
            );
        }
        assert_eq!(linetable_310(&table, 2, 10_000), None);
    }

    /// Checks `locations` against (code unit, line) points of one function.
    fn assert_locations(table_hex: &str, points: &[(u64, u32)]) {
        let table = hex(table_hex);
        for &(unit, line) in points {
            assert_eq!(locations(&table, 2, unit), Some(line), "unit {unit}");
        }
    }

    #[test]
    fn locations_311() {
        assert_locations(
            "8000d8090a8803886189078041e50d12903189588c58f000050511f0000505118801d80b0c88718935f000040911d80c0d8f488a48d81011f103010d13f400010d13f000010d13f000010d13f006000d11dd0b0e887189368c36804d",
            &[
                (0, 2),
                (3, 3),
                (6, 3),
                (9, 5),
                (12, 5),
                (15, 5),
                (18, 5),
                (21, 5),
                (24, 6),
                (27, 6),
                (30, 7),
                (33, 7),
                (36, 7),
                (39, 7),
                (42, 7),
                (45, 7),
                (48, 7),
                (51, 10),
                (54, 11),
                (57, 11),
                (60, 11),
                (63, 11),
                (66, 11),
            ],
        );
    }

    #[test]
    fn locations_312() {
        assert_locations(
            "8000d8090a8803886189078041e40d1290318b58f2000505118801d80b0c88718a35d80c0d8f488948d81011f503010d13f006000d11f00b050511f40c000c0f88718b36804d",
            &[
                (0, 2),
                (3, 3),
                (6, 3),
                (9, 5),
                (12, 5),
                (15, 5),
                (18, 5),
                (21, 6),
                (24, 6),
                (27, 7),
                (30, 7),
                (33, 7),
                (36, 7),
                (39, 7),
                (42, 7),
                (45, 5),
                (48, 11),
                (51, 11),
                (54, 11),
            ],
        );
    }

    #[test]
    fn locations_313() {
        assert_locations(
            "8000d8090a8803886189078041e40d1290318e588801d80b0c88718f35d80c0d8f488948d81011f603010d13f106000d11f10b000e16f40c000c0f88718b36804d",
            &[
                (0, 2),
                (3, 3),
                (6, 3),
                (9, 5),
                (12, 5),
                (15, 5),
                (18, 5),
                (21, 6),
                (24, 6),
                (27, 6),
                (30, 6),
                (33, 7),
                (36, 7),
                (39, 7),
                (42, 8),
                (45, 7),
                (48, 7),
                (51, 10),
                (54, 11),
                (57, 11),
                (60, 11),
                (63, 11),
            ],
        );
        assert_eq!(locations(&[0x00, 0x01], 2, 0), None, "corrupt table");
    }
}
