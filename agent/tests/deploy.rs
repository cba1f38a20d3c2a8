//! The Kubernetes deployment files: `deploy/validate.sh` renders the Helm chart (Helm's own
//! template engine, from PyPI's helm-python-sdk) and validates it and the plain manifests against
//! the Kubernetes OpenAPI schemas offline (kubernetes-validate, which bundles them), strictly, and
//! checks the config in the ConfigMaps is the one in deploy/config (which the agent must parse).

use std::path::Path;
use std::process::Command;

#[test]
fn chart_and_manifests_validate_offline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash").arg("deploy/validate.sh").current_dir(&root).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "deploy/validate.sh failed");
    assert!(text.contains("deploy: all checks passed"));
}

#[test]
fn shipped_config_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("deploy/config/config.toml");
    let cfg = inferscope::daemon::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.rules.len() >= 4, "default rules for llama.cpp, vLLM, TGI, Ollama");
    for name in ["llama.cpp", "vllm", "tgi", "ollama"] {
        assert!(cfg.rules.iter().any(|r| r.name == name), "rule {name}");
    }
}
