//! py-spy from PyPI, the reference the Python flamegraph test compares with (issue 14): a venv
//! under `~/.cache/inferscope/pyspy-<version>/` (one wheel, a few seconds); returns the binary.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::{run, step};

const PY_SPY: &str = "py-spy==0.4.3";

pub fn ensure() -> Result<PathBuf> {
    let dir = crate::home().join(".cache/inferscope").join(PY_SPY.replace("==", "-"));
    let bin = dir.join("bin/py-spy");
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(bin);
    }
    step("py-spy (reference for the Python flamegraph test): building a venv from PyPI");
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    run(Command::new(dir.join("bin/python")).args(["-m", "pip", "install", "-q", PY_SPY]))?;
    std::fs::write(&done, PY_SPY)?;
    Ok(bin)
}
