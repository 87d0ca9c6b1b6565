use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds the eBPF programs (the `tracer` binary of tracer-ebpf) for
/// bpfel-unknown-none with the nightly pinned in tracer-ebpf/toolchain, so
/// that src/probes embeds the object with `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    let toolchain = include_str!("../tracer-ebpf/toolchain").trim();
    println!("cargo:rerun-if-changed=../tracer-ebpf/toolchain");
    let metadata = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("tracer has no parent directory"))?
        .join("tracer-ebpf");
    let root_dir = metadata
        .to_str()
        .context("the tracer-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [Package {
            name: "tracer-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(toolchain),
    )
}
