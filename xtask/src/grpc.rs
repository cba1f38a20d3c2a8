//! The gRPC test fixture's Python: a venv with `grpcio` from PyPI (a binary wheel, ~20 s),
//! cached outside the checkout in `~/.cache/inferscope/grpcio-<version>/`, keyed by version.
//! The tests use grpc's generic handlers with raw-bytes serializers, so no grpcio-tools or
//! .proto compilation is needed. grpcio links BoringSSL without exported symbols, so gRPC over
//! TLS that the agent can decode is served by `@grpc/grpc-js` from npm on Node's OpenSSL
//! (pure JS, ~14 MB, a few seconds), cached the same way in `~/.cache/inferscope/grpc-js-<version>/`.

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

pub const GRPC_JS: &str = "@grpc/grpc-js@1.14.7";

/// The `node_modules` folder holding `@grpc/grpc-js` (the tests put it in `NODE_PATH`).
pub fn ensure_grpc_js() -> Result<PathBuf> {
    let dir = crate::home().join(".cache/inferscope").join(GRPC_JS.trim_start_matches("@grpc/").replace('@', "-"));
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(dir.join("node_modules"));
    }
    step("grpc-js: installing @grpc/grpc-js from npm for the gRPC-over-TLS test server");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    run(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--no-save", "--prefix"])
        .arg(&dir)
        .arg(GRPC_JS))?;
    std::fs::write(&done, GRPC_JS)?;
    Ok(dir.join("node_modules"))
}
