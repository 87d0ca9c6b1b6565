//! Fake `_Py_DebugOffsets` in this process's memory, read as a traced
//! process's would be.

use tracer_common::py_config;

use super::*;
use crate::python::layout::{Layout, LayoutError};

fn put(blob: &mut [u8], pos: u64, value: u64) {
    blob[pos as usize..pos as usize + 8].copy_from_slice(&value.to_ne_bytes());
}

/// A `_Py_DebugOffsets` of version `hex` (PY_VERSION_HEX) with 3.15's
/// values (read from Debian's 3.15.2) at the positions of 3.`minor`.
fn fake(hex: u64, minor: u8) -> Vec<u8> {
    let at = positions(minor).expect("a known version");
    let mut blob = vec![0u8; 1024];
    blob[..8].copy_from_slice(COOKIE);
    put(&mut blob, 8, hex);
    let values = [
        (at.tstate_size, 888),
        (at.current_frame, 72),
        (at.frame_size, 88),
        (at.frame_previous, 8),
        (at.frame_executable, 0),
        (at.frame_instr_ptr, 56),
        (at.frame_owner, 74),
        (at.code_size, 216),
        (at.code_filename, 112),
        (at.code_name, 120),
        (at.code_qualname, 128),
        (at.code_linetable, 136),
        (at.code_firstlineno, 68),
        (at.code_adaptive, 208),
    ];
    for (pos, value) in values {
        put(&mut blob, pos, value);
    }
    for ((_, value), pos) in FIXED.iter().zip(at.fixed) {
        put(&mut blob, pos, *value);
    }
    if let Some([ascii, compact]) = at.str_sizes {
        put(&mut blob, ascii, 40);
        put(&mut blob, compact, 56);
    }
    blob
}

fn layout(minor: u8, blob: &[u8]) -> Result<Layout, LayoutError> {
    let memory = Memory::new(std::process::id());
    Layout::for_version(minor, &memory, blob.as_ptr() as u64)
}

#[test]
fn reads_each_known_version() {
    for (minor, hex, tss_key, owner_cstack, tag_bits) in [
        (13, 0x030d_00f0, 2160, 3, 0),
        (14, 0x030e_0af0, 2336, 4, 1),
        (15, 0x030f_02f0, py_config::NONE, 3, 1),
    ] {
        let l = layout(minor, &fake(hex, minor)).expect("layout");
        assert_eq!(l.kernel.tss_key, tss_key, "3.{minor}");
        assert_eq!(l.kernel.tstate_frame, 72);
        assert_eq!(l.kernel.frame_previous, 8);
        assert_eq!(l.kernel.frame_instr, 56);
        assert_eq!(l.kernel.frame_owner, 74);
        assert_eq!(l.kernel.owner_cstack, owner_cstack);
        assert_eq!(l.kernel.code_tag_bits, tag_bits);
        assert_eq!(l.kernel.code_firstlineno, 68);
        assert_eq!(l.kernel.code_name, 128, "the qualified name");
        assert_eq!(l.kernel.code_flags, 48);
        assert_eq!(l.kernel.str_ascii_data, 40);
        assert_eq!(l.kernel.str_compact_data, 56);
        assert_eq!(l.code.filename, 112);
        assert_eq!(l.code.lines, Lines::Locations { code_adaptive: 208 });
        assert_eq!(l.warning(), None);
    }
}

#[test]
fn refuses_what_it_cannot_use() {
    let mut blob = fake(0x030f_02f0, 15);
    put(&mut blob, 16, 1);
    assert!(matches!(
        layout(15, &blob),
        Err(LayoutError::FreeThreaded(15))
    ));
    // The version the binary says is not the one its runtime says.
    let blob = fake(0x030e_0af0, 15);
    let err = layout(15, &blob).expect_err("3.14 at 3.15's layout");
    assert!(err.to_string().contains("0x30e0af0"), "{err}");
    let mut blob = fake(0x030f_02f0, 15);
    blob[..8].copy_from_slice(b"notdebug");
    assert!(matches!(
        layout(15, &blob),
        Err(LayoutError::DebugOffsets(15, _))
    ));
}

#[test]
fn newer_version_with_the_newest_layout_is_read_with_a_warning() {
    let l = layout(16, &fake(0x0310_00a2, 15)).expect("3.16 laid out as 3.15");
    assert!(l.newer_than_known);
    assert_eq!(l.kernel.tss_key, py_config::NONE);
    assert_eq!(l.kernel.frame_owner, 74);
    assert_eq!(l.code.lines, Lines::Locations { code_adaptive: 208 });
    let warning = l.warning().expect("a warning");
    assert!(
        warning.contains("3.16") && warning.contains("3.15"),
        "{warning}"
    );
}

#[test]
fn newer_version_with_another_layout_is_refused() {
    // 3.16 inserts a field before `interpreter_frame`: at 3.15's positions
    // the frame's size and offsets no longer agree.
    let mut blob = fake(0x0310_00a2, 15);
    let frame = positions(15).expect("3.15").frame_size as usize;
    blob.splice(frame..frame, [0xaa; 8]);
    let err = layout(16, &blob).expect_err("refused");
    let message = err.to_string();
    assert!(matches!(err, LayoutError::Unrecognized(16, _)), "{message}");
    assert!(
        message.contains("3.16") && message.contains("interpreter_frame"),
        "{message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");
    // A field added to the header moves everything.
    let mut blob = fake(0x0310_00a2, 15);
    blob.splice(24..24, [0; 8]);
    let message = layout(16, &blob).expect_err("refused").to_string();
    assert!(message.contains("thread_state"), "{message}");
    // Strings laid out differently from what the kernel reads.
    let mut blob = fake(0x0310_00a2, 15);
    put(&mut blob, positions(15).expect("3.15").fixed[4], 40);
    let message = layout(16, &blob).expect_err("refused").to_string();
    assert!(message.contains("unicode_object.state"), "{message}");
    // A newer version without the cookie says what is missing.
    let mut blob = fake(0x0310_00a2, 15);
    blob[..8].copy_from_slice(b"notdebug");
    let message = layout(16, &blob).expect_err("refused").to_string();
    assert!(
        message.contains("3.16") && message.contains("cookie"),
        "{message}"
    );
}
