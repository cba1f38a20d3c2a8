//! Builds `agent-ebpf` for the BPF target with the nightly toolchain and bpf-linker, so the
//! object can be embedded in the agent with `include_bytes_aligned!`. `cargo xtask setup` installs
//! what this needs on a bare machine.
use anyhow::{anyhow, Context as _};
use aya_build::{build_ebpf, Package, Toolchain};

/// `INFERSCOPE_REVISION` for `inferscope_build_info`: the variable if the build sets it (an
/// image build without `.git`), else the checkout's commit, else `unknown`.
fn revision() {
    println!("cargo:rerun-if-env-changed=INFERSCOPE_REVISION");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let rev = std::env::var("INFERSCOPE_REVISION")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // A commit or checkout rewrites HEAD's reflog: the revision is read again then.
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
        println!("cargo:rerun-if-changed={dir}/HEAD");
    }
    println!("cargo:rustc-env=INFERSCOPE_REVISION={rev}");
}

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent directory"))?
        .join("agent-ebpf");
    let root = root.to_str().context("non-UTF-8 path to agent-ebpf")?;
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed=../agent-common/src");
    revision();
    build_ebpf([Package { name: "agent-ebpf", root_dir: root, ..Default::default() }], Toolchain::Custom("nightly"))
        .context("building the eBPF programs failed; run `cargo xtask setup` once to install rust-src and bpf-linker")
}
