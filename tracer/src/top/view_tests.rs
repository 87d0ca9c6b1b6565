use super::*;
use crate::{
    census::{Coverage, Moment, TypeCount},
    top::growth::Trend,
};

fn py(function: &str, line: u32) -> Loc {
    Loc {
        function: function.into(),
        file: Some("/srv/app/service.py".into()),
        line: Some(line),
        module: "python3.11".into(),
    }
}

fn cell(tid: Tid, stack: u32, live: u64, allocations: u64, last: u64) -> Cell {
    Cell {
        tid,
        stack: StackId(stack),
        live: Amount {
            bytes: live,
            count: 1,
        },
        allocations,
        last_bytes: last,
    }
}

fn update(cells: Vec<Cell>) -> Update {
    Update {
        processes: vec![ProcessData {
            pid: 42,
            command: "python3 service.py".into(),
            live_bytes: 1 << 20,
            rss_bytes: Some(8 << 20),
            alloc_rate: 2048.0,
            events_rate: 10.0,
            cells,
        }],
        stacks: vec![
            (
                StackId(1),
                StackInfo {
                    python: vec![py("remember", 22), py("handle", 28)],
                    native: None,
                },
            ),
            (
                StackId(2),
                StackInfo {
                    python: vec![py("render", 18)],
                    native: Some(vec![
                        Loc {
                            function: "malloc".into(),
                            module: "libc.so.6".into(),
                            ..Loc::default()
                        },
                        Loc {
                            function: "bytes_concat".into(),
                            file: Some("Objects/bytesobject.c".into()),
                            line: Some(1455),
                            module: "python3.11".into(),
                        },
                    ]),
                },
            ),
            // Another stack at the same line as stack 1.
            (
                StackId(3),
                StackInfo {
                    python: vec![py("remember", 22), py("main", 40)],
                    native: None,
                },
            ),
        ],
        lost_events: 3,
        sampling: None,
        interval_s: 1.0,
    }
}

#[test]
fn rows_group_by_line_and_sort_by_key() {
    let mut data = Data::default();
    // remember() grows by 1000 bytes a refresh; render() allocates most.
    for i in 1..=5u64 {
        data.update(update(vec![
            cell(1, 1, 600 * i, 10 * i, 1000),
            cell(2, 3, 400 * i, 5 * i, 0),
            cell(1, 2, 100, 1000 * i, 50_000),
        ]));
    }
    let trend = Trend::default();
    let mut state = State::default();
    let rows = data.rows(&state, &trend);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].label, "remember  service.py:22");
    assert_eq!((rows[0].live, rows[0].allocations), (5000, 75));
    assert!((rows[0].live_pct - 5000.0 * 100.0 / 5100.0).abs() < 1e-9);
    let mark = rows[0].growth.expect("remember grows");
    assert!((mark.rate - 1000.0).abs() < 1e-6, "{mark:?}");
    assert_eq!(rows[1].growth, None);
    state.sort = Sort::Allocated;
    assert_eq!(data.rows(&state, &trend)[0].label, "render  service.py:18");
    state.sort = Sort::Count;
    assert_eq!(data.rows(&state, &trend)[0].label, "render  service.py:18");
    state.sort = Sort::Growth;
    assert_eq!(
        data.rows(&state, &trend)[0].label,
        "remember  service.py:22"
    );
    // One thread: only its cells.
    state.thread = Some(2);
    let rows = data.rows(&state, &trend);
    assert_eq!((rows.len(), rows[0].live), (1, 2000));
    assert_eq!(data.threads(&state), [1, 2]);
    // Native frames: the allocation function's caller, once symbolized.
    state.thread = None;
    state.mode = Mode::Native;
    state.sort = Sort::Live;
    let labels: Vec<String> = data
        .rows(&state, &trend)
        .into_iter()
        .map(|r| r.label)
        .collect();
    assert_eq!(
        labels,
        [
            "[native, being symbolized]",
            "bytes_concat  bytesobject.c:1455"
        ]
    );
}

#[test]
fn the_screen_and_its_text() {
    let mut data = Data::default();
    data.update(update(vec![cell(1, 1, 4096, 4, 4096)]));
    let mut state = State {
        expanded: true,
        ..State::default()
    };
    let s = screen(&data, &state, &Trend::default(), 10);
    assert_eq!(s.header[0], "tracer top  pid 42 (1/1)  python3 service.py");
    assert!(s.header[1].starts_with("live heap 1.00 MiB  rss 8.00 MiB  alloc 2.00 KiB/s"));
    assert!(s.header[2].contains("lost events 3"), "{:?}", s.header);
    // At 80 columns, nothing of the header is cut, sampled or not.
    assert!(s.header.iter().all(|h| h.len() <= 80), "{:?}", s.header);
    let mut sampled = update(vec![cell(1, 1, 4096, 4, 4096)]);
    sampled.sampling = Some(262_144);
    sampled.lost_events = 1_234;
    let mut d = Data::default();
    d.update(sampled);
    let h = screen(&d, &state, &Trend::default(), 10).header;
    assert!(
        h[2].ends_with("lost events 1,234  sampled 1/256.00 KiB"),
        "{h:?}"
    );
    assert!(h.iter().all(|l| l.len() <= 80), "{h:?}");
    assert_eq!(s.rows[0][5], "remember  service.py:22");
    assert_eq!(s.detail[1], "py  handle  service.py:28");
    let text = text(&s);
    assert!(
        text.contains(
            "  4.00 KiB 100.0         4   4.00 KiB               remember  service.py:22\n"
        ),
        "{text}"
    );
    // Objects by type, the growing one first.
    state.objects = true;
    let walk = |ts_ns, sessions| Census {
        pid: 42,
        ts_ns,
        moment: Moment::Periodic,
        types: vec![
            TypeCount {
                name: "dict".into(),
                count: 100,
                bytes: 100_000,
            },
            TypeCount {
                name: "Session".into(),
                count: sessions,
                bytes: sessions * 64,
            },
        ],
        by_stack: vec![],
        coverage: Coverage::default(),
        notes: vec![],
    };
    data.walked(walk(0, 10));
    data.walked(walk(5_000_000_000, 1010));
    let s = screen(&data, &state, &Trend::default(), 10);
    assert_eq!(
        s.rows[0],
        ["1,010", "63.12 KiB", "+1,000", "+62.50 KiB", "Session"]
    );
    assert!(s.header[3].ends_with("growth over 5.0 s"), "{:?}", s.header);
}
