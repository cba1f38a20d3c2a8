//! The OTLP test's stand-in receiver's Python: a venv with the official OpenTelemetry proto
//! definitions from PyPI (`opentelemetry-proto`, generated `*_pb2` modules, with `protobuf`),
//! cached outside the checkout in `~/.cache/inferscope/opentelemetry-proto-<version>/`, keyed by
//! version (~20 s once). `tests/servers/otlp_receiver.py` decodes what the agent sends with it.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::{run, step};

pub const OTEL_PROTO: &str = "opentelemetry-proto==1.45.2";
pub const PROTOBUF: &str = "protobuf==7.36.2";

pub fn ensure_python() -> Result<PathBuf> {
    let dir = crate::home().join(".cache/inferscope").join(OTEL_PROTO.replace("==", "-"));
    let python = dir.join("bin/python");
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(python);
    }
    step("opentelemetry-proto: building a venv from PyPI for the stand-in OTLP receiver");
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    run(Command::new(&python).args(["-m", "pip", "install", "-q", OTEL_PROTO, PROTOBUF]))?;
    std::fs::write(&done, format!("{OTEL_PROTO} {PROTOBUF}"))?;
    Ok(python)
}
