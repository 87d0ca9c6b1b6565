//! Where a recording's events come from: the processes it traces
//! (`targets`, started by `launch` or found in /proc), the eBPF programs
//! and their probes (`probes`), and the collector that turns the kernel's
//! records into events in the model.

mod adopt;
pub mod collector;
pub mod hold;
pub mod identity;
pub mod launch;
pub mod pending;
pub mod poll;
pub mod probes;
pub mod procfs;
pub mod targets;
pub mod walks;
