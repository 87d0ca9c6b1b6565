#![no_std]
// The eBPF programs are the `tracer` binary target (src/main.rs), built for
// bpfel-unknown-none by aya-build; this empty library only lets the host
// build see the crate as tracer's build dependency.
