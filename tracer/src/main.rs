//! The `tracer` binary; everything is in the library (src/lib.rs).

/// tracer's own memory does not come from libc's malloc: the probes are on
/// libc's, and each of tracer's own calls would trap into the kernel (to
/// be filtered out there, but at a trap's cost) while it records and
/// builds reports.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracer::main()
}
