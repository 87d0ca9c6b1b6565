//! Where a recording's events come from: the processes it traces and
//! their lifecycle (`lifecycle`: targets, adoption, launching, pids told
//! apart, events held until a process is adopted), the eBPF programs and
//! their probes (`probes`), and the collector that turns the kernel's
//! records into events in the model; heap walks for types (`walks`, with
//! `hold` for a launched command stopped at its finalization).

pub mod collector;
pub mod hold;
pub mod lifecycle;
pub mod poll;
pub mod probes;
pub mod procfs;
pub mod walks;
