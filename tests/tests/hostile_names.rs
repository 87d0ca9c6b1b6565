//! Names a traced process chooses (its command line, its code objects'
//! function and file names) reach a terminal and line-based files only
//! escaped: no escape sequence, no line end of theirs, no bidirectional
//! override.

use std::fs;

use tests::{DEBIAN_PYTHON, record, workload};

const COUNT: u64 = 200;
const SIZE: u64 = 100_000;

fn assert_clean(what: &str, text: &str) {
    for hidden in ['\x1b', '\x07', '\r', '\u{202e}'] {
        assert!(
            !text.contains(hidden),
            "{what} holds {hidden:?} unescaped:\n{text}"
        );
    }
}

#[test]
fn hostile_names_are_escaped_in_text_and_folded_output() {
    let script = workload("hostile_names.py");
    let r = record(&[
        "--",
        DEBIAN_PYTHON,
        script.to_str().expect("utf-8 path"),
        &COUNT.to_string(),
        &SIZE.to_string(),
        "\x1b[2J\x1b]0;title\x07\narg",
    ]);
    let stdout = r.stdout();
    assert_clean("the text report", &stdout);
    assert_clean("stderr", &r.stderr());
    // The frames were read, and shown escaped.
    assert!(
        stdout.contains("evil\\x1b]0;owned\\x07\\x1b[2J\\u{202e}emanrif\\nsecond line"),
        "the hostile function is not in the report:\n{stdout}"
    );
    assert!(stdout.contains("\\x1b[31mred\\rfile\\n.py"), "{stdout}");

    for name in ["stacks.folded", "hotspots.folded"] {
        let folded = fs::read_to_string(r.dir.path().join(name)).expect("read folded");
        assert_clean(name, &folded);
        // One stack a line: frames;...;frames BYTES.
        for line in folded.lines() {
            let (_, bytes) = line.rsplit_once(' ').expect("a count");
            assert!(bytes.parse::<u64>().is_ok(), "{name}: {line:?}");
        }
        assert!(folded.contains("\\nsecond line"), "{name}:\n{folded}");
    }
    // The leak itself is exact: bytearray(n) allocates n + 1 bytes.
    let leaked: u64 = r
        .entries("leaks")
        .iter()
        .filter(|e| {
            tests::has_function(e, "evil\x1b]0;owned\x07\x1b[2J\u{202e}emanrif\nsecond line")
        })
        .filter_map(|e| e["bytes"].as_u64())
        .sum();
    assert_eq!(leaked, COUNT * (SIZE + 1), "{stdout}");
}
