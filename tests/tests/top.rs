//! `tracer top` as a person sees it: in tmux at 80x24 (send-keys,
//! capture-pane) against Debian's python3.11 running `growing.py`, whose
//! `leak` keeps 20 bytearrays of 10,000 bytes every 50 ms; and `--once`
//! read as text.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tests::{DEBIAN_PYTHON, line_of, loaded_tracer_program_ids, workload};

/// `bytearray(10_000)`: its buffer, with the terminator.
const LEAK_BLOCK: f64 = 10_001.0;
/// 20 blocks per loop of at least 50 ms.
const MAX_LEAK_RATE: f64 = 20.0 * LEAK_BLOCK / 0.05;

/// A tmux server of its own (`-L`), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("tracer-top-test-{}", std::process::id()),
        };
        let status = Command::new("tmux")
            .args([
                "-L",
                &tmux.socket,
                "new-session",
                "-d",
                "-s",
                "top",
                "-x",
                "80",
                "-y",
                "24",
            ])
            .arg(command)
            .status()
            .expect("tmux (installed by cargo xtask setup)");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn keys(&self, keys: &str) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "top", keys])
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "top"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The first screen for which `check` is true, or a failure with the
    /// last screen.
    fn wait_for(&self, what: &str, timeout: Duration, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}; the screen:\n{screen}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// A row of the locations table: LIVE, %, ALLOCS, LAST, [GROWTH], LOCATION.
#[derive(Debug)]
struct Row {
    live: f64,
    allocations: u64,
    last: f64,
    location: String,
}

/// "3.82 MiB" as bytes.
fn bytes(number: &str, unit: &str) -> Option<f64> {
    let n: f64 = number.parse().ok()?;
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * scale)
}

/// The rows of the locations table on `screen`, in order.
fn rows(screen: &str) -> Vec<Row> {
    screen
        .lines()
        .skip_while(|l| !(l.contains("LIVE") && l.contains("LOCATION")))
        .skip(1)
        .map_while(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let live = bytes(t.first()?, t.get(1)?)?;
            let allocations = t.get(3)?.replace(',', "").parse().ok()?;
            let last = bytes(t.get(4)?, t.get(5)?)?;
            let rest = if t.get(6)?.starts_with('+') { 8 } else { 6 };
            Some(Row {
                live,
                allocations,
                last,
                location: t.get(rest..)?.join(" "),
            })
        })
        .collect()
}

/// The row of `leak growing.py:LINE` among the first three.
fn leak_row(screen: &str, line: u64) -> Option<Row> {
    let want = format!("leak growing.py:{line}");
    rows(screen)
        .into_iter()
        .take(3)
        .find(|r| r.location == want)
}

/// Checks the leak row's bytes: 10 KB per allocation (a few small list
/// resizes at the same line lower the mean), within 10%.
fn plausible(row: &Row) {
    let per_allocation = row.live / row.allocations as f64;
    assert!(
        (LEAK_BLOCK * 0.9..=LEAK_BLOCK * 1.1).contains(&per_allocation),
        "{row:?}: {per_allocation} bytes per allocation"
    );
}

/// `growing.py` under Debian's python3.11, once it is ready.
fn growing() -> Child {
    let mut child = Command::new(DEBIAN_PYTHON)
        .arg(workload("growing.py"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the workload");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "ready");
    child
}

#[test]
fn top_in_a_terminal_shows_the_leak_growing_and_quits_clean() {
    let script = workload("growing.py");
    let leak = line_of(&script, "# LEAK");
    let mut target = growing();
    let before = loaded_tracer_program_ids();
    let tmux = Tmux::start(&format!(
        "{} top --pid {}; echo TOP-EXITED $?; sleep 120",
        tests::tracer_bin().display(),
        target.id()
    ));
    let started = Instant::now();
    let first = tmux.wait_for(
        "leak row in the first three",
        Duration::from_secs(30),
        |s| leak_row(s, leak).is_some(),
    );
    let ours: BTreeSet<u32> = loaded_tracer_program_ids()
        .difference(&before)
        .copied()
        .collect();
    assert!(!ours.is_empty(), "no programs of this tracer are loaded");
    assert!(first.contains("sort: live"), "{first}");
    // The header is whole at 80 columns: its last number is on screen.
    let lost = first
        .lines()
        .find_map(|l| l.split("lost events ").nth(1))
        .and_then(|r| {
            r.split_whitespace()
                .next()?
                .replace(',', "")
                .parse::<u64>()
                .ok()
        });
    assert!(lost.is_some(), "lost events cut off:\n{first}");
    let a = leak_row(&first, leak).expect("found above");
    plausible(&a);
    // Live bytes grow by the leak's rate, at most.
    thread::sleep(Duration::from_secs(3));
    let later = tmux.screen();
    let b = leak_row(&later, leak).unwrap_or_else(|| panic!("leak row gone:\n{later}"));
    plausible(&b);
    let grew = b.live - a.live;
    let bound = MAX_LEAK_RATE * (started.elapsed().as_secs_f64() + 1.0);
    assert!(
        grew > 0.0 && b.live <= bound,
        "{a:?} then {b:?} (at most {bound})\n{later}"
    );

    // Each sort orders its column.
    for (key, name, column) in [
        ("a", "allocated", (|r: &Row| r.last) as fn(&Row) -> f64),
        ("c", "count", |r: &Row| r.allocations as f64),
        ("l", "live", |r: &Row| r.live),
    ] {
        tmux.keys(key);
        let s = tmux.wait_for(name, Duration::from_secs(5), |s| {
            s.contains(&format!("sort: {name}"))
        });
        let values: Vec<f64> = rows(&s).iter().map(column).collect();
        assert!(values.len() >= 3, "{s}");
        // Shown to three digits: equal on screen may be out of order.
        assert!(
            values.windows(2).all(|w| w[0] >= w[1] * 0.99),
            "sort {name} does not order its column: {values:?}\n{s}"
        );
    }
    tmux.keys("g");
    tmux.wait_for("growth sort", Duration::from_secs(5), |s| {
        s.contains("sort: growth")
    });
    tmux.keys("l");

    // Native frames, and back.
    tmux.keys("n");
    tmux.wait_for("native view", Duration::from_secs(5), |s| {
        s.contains("view: native")
    });
    tmux.keys("n");
    tmux.wait_for("python view", Duration::from_secs(5), |s| {
        s.contains("view: python") && leak_row(s, leak).is_some()
    });

    // The help, then the leak's whole stack (the first row, sorted by live).
    tmux.keys("?");
    tmux.wait_for("help", Duration::from_secs(5), |s| {
        s.contains("q, Esc, Ctrl-C  quit")
    });
    tmux.keys("?");
    tmux.keys("Enter");
    tmux.wait_for("the leak's stack", Duration::from_secs(5), |s| {
        s.contains(&format!("py  leak  growing.py:{leak}")) && s.contains("py  main  growing.py:")
    });
    tmux.keys("Enter");

    // Objects by type: the heap walk counts the leaked bytearrays.
    tmux.keys("o");
    let objects = tmux.wait_for("bytearray objects", Duration::from_secs(20), |s| {
        s.lines().any(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            t.last() == Some(&"bytearray")
                && t.first()
                    .and_then(|c| c.replace(',', "").parse::<u64>().ok())
                    .is_some_and(|c| c >= 1_000)
        })
    });
    assert!(objects.contains("view: objects by type"), "{objects}");
    tmux.keys("o");

    // q: tracer ends, its probes go, the workload runs on untouched.
    tmux.keys("q");
    tmux.wait_for("exit", Duration::from_secs(15), |s| {
        s.contains("TOP-EXITED 0")
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !loaded_tracer_program_ids().is_disjoint(&ours) {
        assert!(
            Instant::now() < deadline,
            "probes still loaded 20 s after q"
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        target.try_wait().expect("wait").is_none(),
        "the workload ended"
    );
    let _ = target.kill();
    let _ = target.wait();
}

#[test]
fn once_prints_one_refresh_as_text() {
    let script = workload("growing.py");
    let leak = line_of(&script, "# LEAK");
    // Into a file: the launched workload keeps a pipe open after tracer ends.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("once.txt");
    let file = std::fs::File::create(&path).expect("create");
    let mut top = tests::tracer()
        .args(["top", "--once", "--", DEBIAN_PYTHON])
        .arg(&script)
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .expect("run tracer top --once");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = top.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = top.kill();
            break None;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&path).expect("read the output");
    // A launched command outlives the view, as after `record`: end it.
    let pid: Option<i32> = text
        .lines()
        .find_map(|l| l.strip_prefix("tracer top  pid "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    if let Some(pid) = pid {
        // SAFETY: signalling the workload this test started through tracer.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(status.is_some_and(|s| s.success()), "{status:?}:\n{text}");
    assert!(pid.is_some(), "no header:\n{text}");
    assert!(
        text.contains("live heap ") && text.contains("  rss "),
        "{text}"
    );
    let row = leak_row(&text, leak).unwrap_or_else(|| panic!("no leak row:\n{text}"));
    plausible(&row);
    assert!(row.allocations >= 20 && row.last > 0.0, "{row:?}");
}

/// A workload killed when dropped, also when a test fails.
struct Workload(Child);

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The header's process: its pid, its place and how many are traced, from
/// "tracer top  pid PID (I/N)  COMMAND".
fn shown_process(screen: &str) -> Option<(u32, usize, usize)> {
    let rest = screen
        .lines()
        .find_map(|l| l.strip_prefix("tracer top  pid "))?;
    let mut t = rest.split_whitespace();
    let pid = t.next()?.parse().ok()?;
    let (i, n) = t
        .next()?
        .strip_prefix('(')?
        .strip_suffix(')')?
        .split_once('/')?;
    Some((pid, i.parse().ok()?, n.parse().ok()?))
}

/// The header's thread filter: "all", or a thread id.
fn shown_thread(screen: &str) -> Option<&str> {
    screen
        .lines()
        .find_map(|l| l.split("thread: ").nth(1))?
        .split_whitespace()
        .next()
}

/// The header's "live heap N UNIT".
fn live_heap(screen: &str) -> Option<f64> {
    let rest = screen.lines().find_map(|l| l.strip_prefix("live heap "))?;
    let t: Vec<&str> = rest.split_whitespace().collect();
    bytes(t.first()?, t.get(1)?)
}

/// Waits until no tracer program of `ours` is loaded any more.
fn probes_gone(ours: &BTreeSet<u32>, after: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !loaded_tracer_program_ids().is_disjoint(ours) {
        assert!(
            Instant::now() < deadline,
            "probes still loaded 20 s after {after}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn top_keys_switch_process_and_thread_pause_and_esc_quits_clean() {
    let script = workload("growing.py");
    let leak = line_of(&script, "# LEAK");
    let mut workloads = [Workload(growing()), Workload(growing())];
    let pids = [workloads[0].0.id(), workloads[1].0.id()];
    let before = loaded_tracer_program_ids();
    let tmux = Tmux::start(&format!(
        "{} top --pid {} --pid {}; echo TOP-EXITED $?; sleep 120",
        tests::tracer_bin().display(),
        pids[0],
        pids[1]
    ));
    let screen = tmux.wait_for(
        "two processes and the leak row",
        Duration::from_secs(30),
        |s| shown_process(s).is_some_and(|(_, _, n)| n == 2) && leak_row(s, leak).is_some(),
    );
    let ours: BTreeSet<u32> = loaded_tracer_program_ids()
        .difference(&before)
        .copied()
        .collect();
    let (shown, i, _) = shown_process(&screen).expect("found above");
    assert!(pids.contains(&shown) && i == 1, "{screen}");
    let other = if shown == pids[0] { pids[1] } else { pids[0] };

    // p: the next process, with its own leak row; P: back.
    tmux.keys("p");
    tmux.wait_for("the other process", Duration::from_secs(5), |s| {
        shown_process(s) == Some((other, 2, 2)) && leak_row(s, leak).is_some()
    });
    tmux.keys("P");
    tmux.wait_for("the first process again", Duration::from_secs(5), |s| {
        shown_process(s) == Some((shown, 1, 2)) && leak_row(s, leak).is_some()
    });

    // t: the process's one thread (its main thread, whose id is the pid),
    // its leak row still there; t again: every thread.
    tmux.keys("t");
    let s = tmux.wait_for("one thread", Duration::from_secs(5), |s| {
        shown_thread(s).is_some_and(|t| t != "all")
    });
    assert_eq!(shown_thread(&s), Some(shown.to_string().as_str()), "{s}");
    assert!(leak_row(&s, leak).is_some(), "{s}");
    tmux.keys("t");
    tmux.wait_for("every thread", Duration::from_secs(5), |s| {
        shown_thread(s) == Some("all")
    });

    // space: the view stops changing over several refreshes (1 s each),
    // though the leak goes on; space again: it moves on.
    tmux.keys("Space");
    let paused = tmux.wait_for("paused", Duration::from_secs(5), |s| {
        s.contains("[PAUSED]") && leak_row(s, leak).is_some()
    });
    let row = leak_row(&paused, leak).expect("found above");
    let heap = live_heap(&paused).expect("live heap");
    thread::sleep(Duration::from_millis(2_500));
    let still = tmux.screen();
    let again = leak_row(&still, leak).unwrap_or_else(|| panic!("leak row gone:\n{still}"));
    assert!(still.contains("[PAUSED]"), "{still}");
    assert_eq!(
        (again.live, again.allocations, live_heap(&still)),
        (row.live, row.allocations, Some(heap)),
        "the paused view changed:\n{paused}\nthen\n{still}"
    );
    tmux.keys("Space");
    tmux.wait_for("resumed and grown", Duration::from_secs(5), |s| {
        !s.contains("[PAUSED]") && leak_row(s, leak).is_some_and(|r| r.live > row.live)
    });

    // Esc: tracer ends, its probes go, the workloads run on untouched.
    tmux.keys("Escape");
    tmux.wait_for("exit", Duration::from_secs(15), |s| {
        s.contains("TOP-EXITED 0")
    });
    probes_gone(&ours, "Esc");
    for w in &mut workloads {
        assert!(w.0.try_wait().expect("wait").is_none(), "a workload ended");
    }
}

#[test]
fn top_all_with_sample_bytes_finds_the_leak_as_an_estimate() {
    let script = workload("growing.py");
    let leak = line_of(&script, "# LEAK");
    let target = Workload(growing());
    let pid = target.0.id();
    let tmux = Tmux::start(&format!(
        "{} top --all --sample-bytes 65536; echo TOP-EXITED $?; sleep 120",
        tests::tracer_bin().display(),
    ));
    let started = Instant::now();
    // Every CPython process of the host is traced: step to ours.
    let mut screen = tmux.wait_for("a traced process", Duration::from_secs(30), |s| {
        shown_process(s).is_some()
    });
    assert!(screen.contains("sampled 1/64.00 KiB"), "{screen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while shown_process(&screen).is_none_or(|(p, _, _)| p != pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} never shown:\n{screen}"
        );
        tmux.keys("p");
        thread::sleep(Duration::from_millis(300));
        screen = tmux.screen();
    }
    let s = tmux.wait_for("the leak row", Duration::from_secs(20), |s| {
        shown_process(s).is_some_and(|(p, _, _)| p == pid) && leak_row(s, leak).is_some()
    });
    let row = leak_row(&s, leak).expect("found above");
    // Sampled allocations of one size are weighted alike: bytes per
    // allocation are still the buffer's size.
    plausible(&row);
    // An estimate of at most what the leak kept since tracing began, with
    // sampling's error (sqrt(64 KiB / 1 MiB) is 25% at 1 MiB).
    let bound = MAX_LEAK_RATE * (started.elapsed().as_secs_f64() + 1.0) * 1.25;
    assert!(
        row.live > 0.0 && row.live <= bound,
        "{row:?} (at most {bound})\n{s}"
    );
    tmux.keys("q");
    tmux.wait_for("exit", Duration::from_secs(15), |s| {
        s.contains("TOP-EXITED 0")
    });
}

/// The pid of the process whose command line is exactly `args`.
fn pid_of(args: &[String]) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let got: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        (got == args).then_some(pid)
    })
}

/// Whether `pid` is still a process that has not exited.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_terminal_that_hangs_up_ends_top_and_its_probes() {
    let script = workload("growing.py");
    let leak = line_of(&script, "# LEAK");
    let target = Workload(growing());
    let before = loaded_tracer_program_ids();
    let args = vec![
        tests::tracer_bin().display().to_string(),
        "top".to_owned(),
        "--pid".to_owned(),
        target.0.id().to_string(),
    ];
    let tmux = Tmux::start(&args.join(" "));
    tmux.wait_for(
        "leak row in the first three",
        Duration::from_secs(30),
        |s| leak_row(s, leak).is_some(),
    );
    let ours: BTreeSet<u32> = loaded_tracer_program_ids()
        .difference(&before)
        .copied()
        .collect();
    let top = pid_of(&args).expect("tracer top's pid");
    // The tmux server goes, and the terminal with it (as an ssh session's).
    drop(tmux);
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(top) {
        if Instant::now() > deadline {
            // SAFETY: killing the tracer this test started.
            unsafe { libc::kill(top as i32, libc::SIGKILL) };
            panic!("tracer top still running 20 s after its terminal hung up");
        }
        thread::sleep(Duration::from_millis(200));
    }
    probes_gone(&ours, "the terminal hung up");
}
