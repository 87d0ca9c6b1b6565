//! The terminal side of `tracer top`: a ratatui screen redrawn at each
//! refresh and each key (crossterm), or with `--once` one refresh printed
//! as text. Runs on its own thread; quitting tells the recording to end.

use std::{
    fs::File,
    io::{self, Write as _},
    os::fd::AsRawFd as _,
    sync::{Arc, atomic::Ordering, mpsc},
    time::Duration,
};

use anyhow::{Context as _, Result};
use ratatui::{
    DefaultTerminal,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Alignment, Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
};

use super::{
    growth::{GrowthAnalysis, Trend},
    sink::{Message, Shared},
    view::{self, Data, Mode, Sort, State},
};

/// Rows `--once` prints.
const ONCE_ROWS: usize = 20;
/// How long `--once` waits for the native frames of the rows it prints.
const SYMBOLS_WAIT: Duration = Duration::from_secs(5);
/// Lines of the detail pane (a stack, the help) at most.
const DETAIL_LINES: u16 = 12;
/// How long the screen waits for a key before it looks for messages.
const KEY_WAIT: Duration = Duration::from_millis(100);

/// The terminal the keys come from, watched for a hang-up (an ssh session
/// or a tmux server gone): crossterm 0.28 reads a hung-up terminal in a
/// loop that never ends (a read of 0 bytes is no end to it), which left
/// tracer at 100% of a core with its probes in place. So the screen waits
/// on the terminal itself and asks crossterm only once there is input, or
/// for what it already holds.
struct Keys {
    tty: File,
}

impl Keys {
    fn open() -> Result<Self> {
        let tty = File::open("/dev/tty").context("cannot open the terminal (/dev/tty)")?;
        Ok(Self { tty })
    }

    /// Waits up to `timeout` for input; an error once the terminal hung up.
    fn wait(&self, timeout: Duration) -> io::Result<()> {
        let mut fd = libc::pollfd {
            fd: self.tty.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd, borrowed for the call only.
        if unsafe { libc::poll(&mut fd, 1, ms) } < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::Interrupted => Ok(()),
                _ => Err(err),
            };
        }
        if fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return Err(io::Error::other("the terminal hung up"));
        }
        Ok(())
    }
}

/// `--once`: waits for one refresh after the first (the first has no
/// rates yet), prints it, and asks the recording to end.
pub fn once(messages: mpsc::Receiver<Message>, shared: Arc<Shared>, state: State) -> Result<()> {
    let mut data = Data::default();
    let mut refreshes = 0;
    let trend = Trend::default();
    for m in messages.iter() {
        match m {
            Message::Update(u) => {
                data.update(u);
                refreshes += 1;
            }
            Message::Symbolized(id, native) => {
                data.stacks.entry(id).or_default().native = Some(native);
            }
            Message::Census(c) => data.walked(c),
            Message::End => break,
        }
        if refreshes == 2 {
            break;
        }
    }
    // Native frames come from the symbolizing thread: wait a little for
    // those of the rows shown.
    let deadline = std::time::Instant::now() + SYMBOLS_WAIT;
    let mut screen = view::screen(&data, &state, &trend, ONCE_ROWS);
    while screen
        .rows
        .iter()
        .any(|r| r.iter().any(|c| c.contains(view::SYMBOLIZING)))
    {
        let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
            break;
        };
        match messages.recv_timeout(left) {
            Ok(Message::Symbolized(id, native)) => {
                data.stacks.entry(id).or_default().native = Some(native);
            }
            Ok(_) => {}
            Err(_) => break,
        }
        screen = view::screen(&data, &state, &trend, ONCE_ROWS);
    }
    let mut out = std::io::stdout().lock();
    out.write_all(view::text(&screen).as_bytes())?;
    out.flush()?;
    shared.quit.store(true, Ordering::Relaxed);
    Ok(())
}

/// The interactive screen, until the viewer quits or the recording ends.
pub fn interactive(
    messages: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
    state: State,
) -> Result<()> {
    let keys = Keys::open();
    let mut terminal = ratatui::init();
    let result = keys.and_then(|keys| run(&mut terminal, &keys, &messages, &shared, state));
    ratatui::restore();
    shared.quit.store(true, Ordering::Relaxed);
    result
}

fn run(
    terminal: &mut DefaultTerminal,
    keys: &Keys,
    messages: &mpsc::Receiver<Message>,
    shared: &Shared,
    mut state: State,
) -> Result<()> {
    let mut data = Data::default();
    let trend = Trend::default();
    let mut first = true;
    loop {
        while let Ok(m) = messages.try_recv() {
            match m {
                Message::Update(u) if first => {
                    // What tracer printed on stderr as it started.
                    terminal.clear()?;
                    first = false;
                    data.update(u);
                }
                Message::Update(u) if !state.paused => data.update(u),
                Message::Update(_) => {}
                Message::Symbolized(id, native) => {
                    data.stacks.entry(id).or_default().native = Some(native);
                }
                Message::Census(c) => data.walked(c),
                Message::End => return Ok(()),
            }
        }
        terminal.draw(|f| draw(f, &data, &state, &trend))?;
        keys.wait(KEY_WAIT)?;
        // What came, and what crossterm read before (several keys at once).
        while event::poll(Duration::ZERO)? {
            match event::read()? {
                Event::Key(key)
                    if key.kind == KeyEventKind::Press
                        && !on_key(key, &mut state, &data, shared) =>
                {
                    return Ok(());
                }
                Event::Resize(..) => terminal.clear()?,
                _ => {}
            }
        }
    }
}

/// Applies a key; false to quit.
fn on_key(key: KeyEvent, state: &mut State, data: &Data, shared: &Shared) -> bool {
    let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
    match key.code {
        _ if ctrl_c => return false,
        KeyCode::Char('q') | KeyCode::Esc => return false,
        KeyCode::Char('?') | KeyCode::Char('h') => state.help = !state.help,
        KeyCode::Char('l') | KeyCode::Char('1') => state.sort = Sort::Live,
        KeyCode::Char('a') | KeyCode::Char('2') => state.sort = Sort::Allocated,
        KeyCode::Char('c') | KeyCode::Char('3') => state.sort = Sort::Count,
        KeyCode::Char('g') | KeyCode::Char('4') => state.sort = Sort::Growth,
        KeyCode::Char('n') => {
            state.mode = match state.mode {
                Mode::Python => Mode::Native,
                Mode::Native => Mode::Python,
            }
        }
        KeyCode::Char('t') => {
            let tids = data.threads(state);
            state.thread = match state.thread {
                None => tids.first().copied(),
                Some(t) => tids.iter().copied().find(|&x| x > t),
            };
            state.cursor = 0;
        }
        KeyCode::Char('p') | KeyCode::Char('P') => {
            let n = data.processes.len().max(1);
            state.process = if key.code == KeyCode::Char('p') {
                (state.process + 1) % n
            } else {
                (state.process + n - 1) % n
            };
            state.thread = None;
            state.cursor = 0;
            objects_of(state, data, shared);
        }
        KeyCode::Up | KeyCode::Char('k') => state.cursor = state.cursor.saturating_sub(1),
        KeyCode::Down | KeyCode::Char('j') => state.cursor += 1,
        KeyCode::PageUp => state.cursor = state.cursor.saturating_sub(10),
        KeyCode::PageDown => state.cursor += 10,
        KeyCode::Enter | KeyCode::Char('e') => state.expanded = !state.expanded,
        KeyCode::Char(' ') => state.paused = !state.paused,
        KeyCode::Char('o') => {
            state.objects = !state.objects;
            objects_of(state, data, shared);
        }
        _ => {}
    }
    true
}

/// Tells the recording which process's heap to walk, if any.
fn objects_of(state: &State, data: &Data, shared: &Shared) {
    let pid = match (state.objects, data.process(state)) {
        (true, Some(p)) => p.pid,
        _ => 0,
    };
    shared.walk_pid.store(pid, Ordering::Relaxed);
}

fn draw(f: &mut ratatui::Frame, data: &Data, state: &State, growth: &dyn GrowthAnalysis) {
    let area = f.area();
    let detail = if state.help || state.expanded {
        DETAIL_LINES.min(area.height / 2)
    } else {
        0
    };
    let header = if state.objects { 4 } else { 3 };
    let rows = area.height.saturating_sub(header + detail + 2) as usize;
    let s = view::screen(data, state, growth, rows);
    let [top, middle, bottom, footer] = Layout::vertical([
        Constraint::Length(header),
        Constraint::Min(2),
        Constraint::Length(detail),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(s.header.join("\n")), top);
    let mut widths: Vec<Constraint> = s.widths.iter().map(|&w| Constraint::Length(w)).collect();
    widths.push(Constraint::Min(10));
    let bold = Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED);
    // Numbers to the right, the last column (a name) to the left.
    let last = s.columns.len().saturating_sub(1);
    let cells = |r: &[String]| {
        let cells: Vec<Cell> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let align = if i < last {
                    Alignment::Right
                } else {
                    Alignment::Left
                };
                Cell::from(Line::from(c.clone()).alignment(align))
            })
            .collect();
        Row::new(cells)
    };
    let table = Table::new(s.rows.iter().map(|r| cells(r)), widths)
        .header(cells(&s.columns).style(bold))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut selected = TableState::default().with_selected(s.cursor);
    f.render_stateful_widget(table, middle, &mut selected);
    if detail > 0 {
        let title = if state.help { " keys " } else { " stack " };
        f.render_widget(
            Paragraph::new(s.detail.join("\n"))
                .block(Block::default().borders(Borders::TOP).title(title)),
            bottom,
        );
    }
    f.render_widget(
        Paragraph::new(s.footer).style(Style::default().add_modifier(Modifier::REVERSED)),
        footer,
    );
}
