//! Interactive SVG flamegraphs, drawn by inferno from folded stacks.
//!
//! Drawn as icicles, roots at the top (as memray draws them): Python stacks
//! run dozens of frames deep, and the top of the picture is what a browser,
//! or the HTML report's frame, shows first.

use std::io;

use super::{Options, folded};
use crate::report::{Entry, Report};

pub fn render(report: &Report, options: &Options) -> io::Result<Vec<u8>> {
    Ok(svg(report, options.of.entries(report), options.of.title())?.into_bytes())
}

/// A flamegraph of `entries` (bytes), one root per process.
pub fn svg(report: &Report, entries: &[Entry], title: &str) -> io::Result<String> {
    let lines = folded::lines(report, entries);
    if lines.is_empty() {
        // inferno refuses an empty profile, but an empty view (no leaks) is a
        // valid answer: say so in a picture of the same kind.
        return Ok(empty(title));
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_owned();
    options.count_name = "bytes".to_owned();
    options.name_type = "Frame:".to_owned();
    options.direction = inferno::flamegraph::Direction::Inverted;
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut options, lines.lines(), &mut out)?;
    String::from_utf8(out).map_err(io::Error::other)
}

fn empty(title: &str) -> String {
    let title = title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n\
         <svg version=\"1.1\" width=\"1200\" height=\"60\" xmlns=\"http://www.w3.org/2000/svg\">\
         <text x=\"600\" y=\"24\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"17\">{title}</text>\
         <text x=\"600\" y=\"48\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"12\">no allocations in this view</text>\
         </svg>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, FrameKind};

    #[test]
    fn draws_frames_with_their_bytes() {
        let frame = |name: &str| Frame {
            kind: FrameKind::Python,
            function: name.into(),
            module: "python3.11".into(),
            file: Some("/srv/app.py".into()),
            line: Some(3),
            offset: None,
            inlined: false,
            unknown: None,
        };
        let e = Entry {
            pid: 7,
            bytes: 4096,
            count: 1,
            stack: vec![frame("leaf"), frame("root")],
            truncated: false,
            types: vec![],
        };
        let report = crate::report::render::tests::report_of(&[e], "python3");
        let drawn = svg(&report, &report.leaks, "leaks").expect("svg");
        assert!(drawn.starts_with("<?xml"), "{}", &drawn[..40]);
        assert!(drawn.contains("leaf (app.py:3)"));
        assert!(drawn.contains("4,096 bytes"), "count shown");
        let empty = svg(&report, &[], "leaks <min-age 5s>").expect("empty svg");
        assert!(empty.contains("no allocations") && empty.contains("&lt;min-age"));
    }
}
