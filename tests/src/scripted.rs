//! A workload driven line by line: it says what it did on stdout ("ready",
//! "leaked"), and is told what to do next on stdin ("go", "stop"), so that
//! a test can act while it is in a known state. Killed when dropped.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdout, Command, Stdio},
};

pub struct Scripted {
    pub child: Child,
    out: BufReader<ChildStdout>,
}

impl Scripted {
    /// Starts `cmd` and waits for its first line, `first`.
    pub fn start(mut cmd: Command, first: &str) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the workload");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut s = Self { child, out };
        s.expect(first);
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the workload's next line, which must be `what`.
    pub fn expect(&mut self, what: &str) {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read the workload");
        assert_eq!(line.trim(), what, "the workload did not say {what}");
    }

    pub fn say(&mut self, what: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{what}").expect("write to the workload");
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
