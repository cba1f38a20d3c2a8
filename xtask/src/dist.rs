//! `cargo xtask dist`: the release binary for hosts without Kubernetes, as a tarball and a
//! Debian package, with the debug info split off (shipped beside them, not in them), the
//! dashboards, the default config and a systemd unit. `check` unpacks both and runs what they
//! hold, so a broken package fails `cargo xtask test`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context as _, Result};

use crate::{output, run, step};

const UNIT: &str = "\
[Unit]
Description=inferscope: eBPF profiler agent for inference servers (daemon mode)
Documentation=https://github.com/inferscope/inferscope
After=network-online.target

[Service]
Type=simple
# eBPF programs, uprobes and /proc of other processes need root (or CAP_BPF, CAP_PERFMON,
# CAP_SYS_PTRACE, CAP_SYS_RESOURCE, CAP_DAC_READ_SEARCH: see the README).
User=root
ExecStart=/usr/bin/inferscope agent --config /etc/inferscope/config.toml
Restart=on-failure
RestartSec=5
LimitMEMLOCK=infinity
NoNewPrivileges=yes
ProtectHome=read-only
ProtectSystem=full
PrivateTmp=no

[Install]
WantedBy=multi-user.target
";

/// What `build` made.
pub struct Dist {
    pub tarball: PathBuf,
    pub deb: PathBuf,
    pub debug: PathBuf,
}

fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Lays out the package tree under `root` (usr/bin, etc, usr/share, lib/systemd).
fn stage(root: &Path, binary: &Path) -> Result<()> {
    let put = |rel: &str, bytes: &[u8]| -> Result<()> {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap_or(root))?;
        std::fs::write(&p, bytes).with_context(|| format!("{}", p.display()))
    };
    let bin = root.join("usr/bin/inferscope");
    std::fs::create_dir_all(bin.parent().unwrap_or(root))?;
    std::fs::copy(binary, &bin)?;
    put("etc/inferscope/config.toml", &std::fs::read("deploy/config/config.toml")?)?;
    put("lib/systemd/system/inferscope.service", UNIT.as_bytes())?;
    for e in std::fs::read_dir("dashboards")? {
        let p = e?.path();
        if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
            put(&format!("usr/share/inferscope/dashboards/{name}"), &std::fs::read(&p)?)?;
        }
    }
    put("usr/share/doc/inferscope/README.md", &std::fs::read("README.md")?)?;
    Ok(())
}

/// Builds `out/inferscope-VERSION-ARCH.tar.gz`, `out/inferscope_VERSION_ARCH.deb` and the split
/// debug info from `target/release/inferscope` (already built).
pub fn build(out: &Path) -> Result<Dist> {
    step("dist: stripped binary (debug info split off), tarball and .deb");
    let built = PathBuf::from("target/release/inferscope");
    ensure!(built.exists(), "no {} (cargo xtask build)", built.display());
    let arch = output(Command::new("dpkg").arg("--print-architecture")).unwrap_or_else(|_| "amd64".into());
    let v = version();
    std::fs::create_dir_all(out)?;
    let work = out.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    // Debug info beside the package; the binary keeps its symbol table (panics name functions)
    // and a debuglink to the split file.
    let debug = out.join(format!("inferscope-{v}.debug"));
    let stripped = work.join("inferscope");
    run(Command::new("objcopy").arg("--only-keep-debug").arg(&built).arg(&debug))?;
    run(Command::new("objcopy").arg("--strip-debug").arg(&built).arg(&stripped))?;
    run(Command::new("objcopy").arg(format!("--add-gnu-debuglink={}", debug.display())).arg(&stripped))?;

    let name = format!("inferscope-{v}-{arch}");
    let tree = work.join(&name);
    stage(&tree, &stripped)?;
    let tarball = out.join(format!("{name}.tar.gz"));
    run(Command::new("tar").arg("-C").arg(&work).arg("-czf").arg(&tarball).arg(&name))?;

    let pkg = work.join("deb");
    stage(&pkg, &stripped)?;
    let control = format!(
        "Package: inferscope\nVersion: {v}\nArchitecture: {arch}\nMaintainer: inferscope developers <inferscope@localhost>\n\
         Depends: libc6\nSection: devel\nPriority: optional\nHomepage: https://github.com/inferscope/inferscope\n\
         Description: eBPF profiler agent for inference servers\n \
         Measures time to first token, inter-token latency, stage latency and CPU profiles of\n \
         inference servers from outside the process. The systemd unit runs the daemon mode;\n \
         it is installed, not enabled: systemctl enable --now inferscope.\n"
    );
    std::fs::create_dir_all(pkg.join("DEBIAN"))?;
    std::fs::write(pkg.join("DEBIAN/control"), control)?;
    std::fs::write(pkg.join("DEBIAN/conffiles"), "/etc/inferscope/config.toml\n")?;
    let deb = out.join(format!("inferscope_{v}_{arch}.deb"));
    run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zgzip", "--build"]).arg(&pkg).arg(&deb))?;
    std::fs::remove_dir_all(&work)?;
    for p in [&tarball, &deb, &debug] {
        let mb = std::fs::metadata(p)?.len() as f64 / 1e6;
        eprintln!("  {} ({mb:.1} MB)", p.display());
    }
    Ok(Dist { tarball, deb, debug })
}

/// Unpacks both artifacts and checks what they hold: the binary runs and reports this version,
/// has no DWARF left but a debuglink, and the unit, config and dashboards are where the unit
/// and the README say.
pub fn check(d: &Dist) -> Result<()> {
    step("dist: check the tarball and the .deb");
    let dir = d.deb.parent().unwrap_or(Path::new(".")).join("check");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&d.deb).arg(dir.join("deb")))?;
    run(Command::new("tar").arg("-C").arg(&dir).arg("-xzf").arg(&d.tarball))?;
    let tar_root = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("inferscope-")))
        .context("the tarball's top directory")?;
    for root in [dir.join("deb"), tar_root] {
        let bin = root.join("usr/bin/inferscope");
        let v = output(Command::new(&bin).arg("--version"))?;
        ensure!(v.contains(&version()), "{}: --version said {v}", bin.display());
        let sections = output(Command::new("objdump").arg("-h").arg(&bin))?;
        ensure!(!sections.contains(".debug_info"), "{}: debug info left in", bin.display());
        ensure!(sections.contains(".gnu_debuglink"), "{}: no debuglink", bin.display());
        for f in [
            "etc/inferscope/config.toml",
            "lib/systemd/system/inferscope.service",
            "usr/share/inferscope/dashboards/inferscope-serving.json",
        ] {
            ensure!(root.join(f).is_file(), "{} missing from {}", f, root.display());
        }
        let unit = std::fs::read_to_string(root.join("lib/systemd/system/inferscope.service"))?;
        ensure!(unit.contains("--config /etc/inferscope/config.toml"), "unit's ExecStart");
    }
    let debug = output(Command::new("objdump").arg("-h").arg(&d.debug))?;
    ensure!(debug.contains(".debug_info"), "{}: no DWARF in the split debug file", d.debug.display());
    let info = output(Command::new("dpkg-deb").arg("-I").arg(&d.deb))?;
    if !info.contains("Package: inferscope") {
        bail!("dpkg-deb -I: {info}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("  ok: both run `inferscope --version`, no DWARF in the binary, unit/config/dashboards in place");
    Ok(())
}
