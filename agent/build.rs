//! Builds `agent-ebpf` for the BPF target with the nightly toolchain and bpf-linker, so the
//! object can be embedded in the agent with `include_bytes_aligned!`. `cargo xtask setup` installs
//! what this needs on a bare machine.
use anyhow::{anyhow, Context as _};
use aya_build::{build_ebpf, Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent directory"))?
        .join("agent-ebpf");
    let root = root.to_str().context("non-UTF-8 path to agent-ebpf")?;
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed=../agent-common/src");
    build_ebpf([Package { name: "agent-ebpf", root_dir: root, ..Default::default() }], Toolchain::Custom("nightly"))
        .context("building the eBPF programs failed; run `cargo xtask setup` once to install rust-src and bpf-linker")
}
