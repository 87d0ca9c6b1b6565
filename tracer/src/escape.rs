//! Text that traced processes chose (command lines, file and function
//! names, code object names), made safe to print: a terminal must not take
//! it for escape sequences, and a line-based format (the text report,
//! `.folded` files, log lines) must not see a line end in it.

use std::borrow::Cow;

/// Whether `c` would be taken for something else than a visible character:
/// C0 and C1 controls (escape sequences, line ends), DEL, and Unicode's
/// bidirectional overrides (text that reads one way and prints another).
fn is_hidden(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every hidden character written as an escape: `\n`, `\t`, `\r`,
/// `\x1b`, `\u{202e}`. Backslashes stay as they are: the output is for
/// people and line-based tools, not to be unescaped.
pub fn text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if is_hidden(c) && u32::from(c) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if is_hidden(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(text("python3 app.py --port 80"), Cow::Borrowed(_)));
        assert_eq!(text("ünïcode ☃"), "ünïcode ☃");
    }

    #[test]
    fn controls_and_overrides_are_escaped() {
        assert_eq!(text("a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(text("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(text("\u{7f}\u{9b}"), "\\x7f\\x9b");
        assert_eq!(text("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(text("\0"), "\\x00");
        assert!(!text("x\u{2067}y").contains('\u{2067}'));
    }
}
