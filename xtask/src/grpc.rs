//! The gRPC test fixture's Python: a venv with `grpcio` from PyPI (a binary wheel, ~20 s),
//! cached outside the checkout in `~/.cache/inferscope/grpcio-<version>/`, keyed by version.
//! The tests use grpc's generic handlers with raw-bytes serializers, so no grpcio-tools or
//! .proto compilation is needed.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::{run, step};

pub const GRPCIO: &str = "grpcio==1.85.3";

pub fn ensure_python() -> Result<PathBuf> {
    let dir = crate::home().join(".cache/inferscope").join(GRPCIO.replace("==", "-"));
    let python = dir.join("bin/python");
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(python);
    }
    step("grpcio: building a venv from PyPI for the gRPC streaming test server");
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    run(Command::new(&python).args(["-m", "pip", "install", "-q", GRPCIO]))?;
    std::fs::write(&done, GRPCIO)?;
    Ok(python)
}
