//! The daemon's configuration file (TOML): where to listen, the limits, and the discovery rules.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::symbols::glob_match;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `/metrics`, `/flamegraph.svg`, `/healthz`, `/readyz`. Loopback unless configured.
    pub listen: SocketAddr,
    /// Periodic /proc scan that catches exec/exit records the kernel could not deliver.
    pub reconcile_seconds: f64,
    /// Hard cap on exported series (all families together); refusals are counted.
    pub max_series: usize,
    /// Distinct `model` label values per target label set; later models are exported as
    /// `other` and counted in `inferscope_models_folded_total`.
    pub max_models_per_target: usize,
    /// Processes followed at once.
    pub max_targets: usize,
    pub ring_buffer_bytes: u32,
    /// Stream capture path: `auto` (socket layer, syscall tracepoints where it is missing),
    /// `socket` or `syscalls`.
    pub capture: crate::capture::CaptureChoice,
    /// NVML sampling rate; 0 turns GPU telemetry off.
    pub gpu_sample_hz: f64,
    pub nvml_library: Option<PathBuf>,
    /// Series of a label set whose processes are all gone are removed after this long.
    pub series_grace_seconds: f64,
    /// A uprobe no followed process uses any more is kept this long (restarts reuse it).
    pub uprobe_linger_seconds: f64,
    /// Also follow the descendants of a followed process that serve its listening sockets
    /// (pre-fork servers: uvicorn/gunicorn `--workers`, where the master listens and its workers
    /// accept), under the master's rule.
    pub follow_workers: bool,
    /// A stream with no read or write for this long is ended and counted as partial (its close
    /// was lost or its peer vanished); `inferscope_parse_errors_total{kind="idle_timeout"}`.
    pub stream_idle_timeout_seconds: f64,
    /// Pod name, namespace and labels from the Kubernetes API (the pods of this node).
    pub kubernetes: KubernetesMode,
    /// Pods kept in the agent's map of this node's pods; more are counted, not kept.
    pub kubernetes_max_pods: usize,
    #[serde(rename = "rule")]
    pub rules: Vec<Rule>,
    /// A file holding the bearer token `/metrics` and `/flamegraph.svg` then require
    /// (`Authorization: Bearer TOKEN`); read once at start, never logged. None: open.
    pub metrics_bearer_token_file: Option<PathBuf>,
    /// `[otlp]`: also export GenAI metrics over OTLP/HTTP. None: off.
    pub otlp: Option<OtlpConfig>,
    /// `[pprof_push]`: also push CPU profiles to a Pyroscope-compatible `/ingest`. None: off.
    pub pprof_push: Option<PprofPushConfig>,
}

/// `[pprof_push]`: every `interval_seconds`, the next followed process (in turn) is sampled for
/// `seconds` and its profile pushed to `url` (`/ingest` is appended).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PprofPushConfig {
    /// `http://HOST:PORT[/PREFIX]` of Pyroscope (or Alloy's `pyroscope.receive_http`).
    pub url: String,
    #[serde(default = "default_push_interval")]
    pub interval_seconds: f64,
    #[serde(default = "default_push_seconds")]
    pub seconds: f64,
    #[serde(default = "default_otlp_timeout")]
    pub timeout_seconds: f64,
}

fn default_push_interval() -> f64 {
    60.0
}

fn default_push_seconds() -> f64 {
    10.0
}

/// `[otlp]`: where and how often to send the GenAI metrics (OpenTelemetry semantic conventions).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// `http://HOST:PORT` of an OTLP/HTTP receiver (`/v1/metrics` is appended).
    pub endpoint: String,
    #[serde(default = "default_otlp_interval")]
    pub interval_seconds: f64,
    #[serde(default = "default_otlp_timeout")]
    pub timeout_seconds: f64,
}

fn default_otlp_interval() -> f64 {
    crate::export::otlp::DEFAULT_INTERVAL_S
}

fn default_otlp_timeout() -> f64 {
    crate::export::otlp::DEFAULT_TIMEOUT_S
}

impl OtlpConfig {
    pub fn options(&self) -> Result<crate::export::otlp::OtlpOptions, crate::export::otlp::OtlpError> {
        crate::export::otlp::OtlpOptions::new(&self.endpoint, self.interval_seconds, self.timeout_seconds)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            reconcile_seconds: 10.0,
            max_series: 10_000,
            max_models_per_target: crate::http::model::DEFAULT_MAX_MODELS,
            max_targets: 256,
            ring_buffer_bytes: agent_common::DEFAULT_RING_BYTES,
            capture: crate::capture::CaptureChoice::Auto,
            gpu_sample_hz: 10.0,
            nvml_library: None,
            series_grace_seconds: 120.0,
            uprobe_linger_seconds: 60.0,
            follow_workers: true,
            stream_idle_timeout_seconds: 300.0,
            kubernetes: KubernetesMode::Auto,
            // kubelet's default is 110 pods a node; large nodes allow a few hundred.
            kubernetes_max_pods: 1024,
            rules: Vec::new(),
            metrics_bearer_token_file: None,
            otlp: None,
            pprof_push: None,
        }
    }
}

/// When the agent asks the Kubernetes API about pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubernetesMode {
    /// When `NODE_NAME` is set (the DaemonSet sets it from the downward API).
    #[default]
    Auto,
    /// Always: the node name is `NODE_NAME`, else this machine's hostname; the API is found
    /// through `KUBECONFIG` / `~/.kube/config`, else the pod's service account.
    On,
    Off,
}

/// Which processes to follow. Every non-empty field must match; within a list, any entry may.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rule {
    pub name: String,
    /// Globs on /proc/PID/comm (at most 15 characters, as the kernel keeps it).
    pub comm: Vec<String>,
    /// Globs on the executable's path.
    pub exe: Vec<String>,
    /// Globs on the command line, arguments joined with spaces.
    pub cmdline: Vec<String>,
    /// The process must listen on one of these TCP ports.
    pub ports: Vec<u16>,
    /// Kubernetes pod labels that must all be equal.
    pub pod_labels: std::collections::BTreeMap<String, String>,
    /// Stage set (`llama.cpp`, `cuda`, or a .stages file); empty = stream timing only. `profile`,
    /// its old name, is accepted (deprecated).
    #[serde(alias = "profile")]
    pub stage_set: String,
    /// The `service` label; empty = the pod's app label, else the rule's name.
    pub service: String,
}

/// What discovery knows about a process when it matches rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessFacts {
    pub comm: String,
    pub exe: String,
    pub cmdline: String,
    pub listening: Vec<u16>,
    pub pod_labels: Option<std::collections::BTreeMap<String, String>>,
}

impl Rule {
    /// Matches without the listening ports (cheap: no socket walk).
    pub fn matches_identity(&self, p: &ProcessFacts) -> bool {
        let any = |globs: &[String], text: &str| globs.is_empty() || globs.iter().any(|g| glob_match(g, text));
        let labels = self.pod_labels.is_empty()
            || p.pod_labels.as_ref().is_some_and(|l| self.pod_labels.iter().all(|(k, v)| l.get(k) == Some(v)));
        any(&self.comm, &p.comm) && any(&self.exe, &p.exe) && any(&self.cmdline, &p.cmdline) && labels
    }

    pub fn matches(&self, p: &ProcessFacts) -> bool {
        self.matches_identity(p) && (self.ports.is_empty() || self.ports.iter().any(|port| p.listening.contains(port)))
    }

    fn is_empty(&self) -> bool {
        self.comm.is_empty() && self.exe.is_empty() && self.cmdline.is_empty() && self.pod_labels.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("config {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(e) })?;
        let invalid = |problem: String| ConfigError::Invalid { path: path.to_path_buf(), problem };
        if cfg.rules.is_empty() {
            return Err(invalid("no [[rule]]: the agent would follow nothing".into()));
        }
        for (i, r) in cfg.rules.iter().enumerate() {
            if r.name.is_empty() {
                return Err(invalid(format!("rule #{} has no name", i + 1)));
            }
            if r.is_empty() {
                return Err(invalid(format!(
                    "rule `{}` matches every process: give comm, exe, cmdline or pod_labels",
                    r.name
                )));
            }
            if !r.stage_set.is_empty() {
                crate::stages::stage_set::load_stage_set(&r.stage_set)
                    .map_err(|e| invalid(format!("rule `{}`: {e}", r.name)))?;
            }
        }
        if let Some(p) = &cfg.pprof_push {
            super::pprof_push::Endpoint::parse(&p.url).map_err(|e| invalid(format!("[pprof_push] url: {e}")))?;
            let ok = |v: f64| v.is_finite() && v > 0.0;
            if !(ok(p.interval_seconds)
                && ok(p.seconds)
                && ok(p.timeout_seconds)
                && p.seconds <= p.interval_seconds
                && p.seconds <= 300.0)
            {
                return Err(invalid("[pprof_push]: interval_seconds, seconds and timeout_seconds must be > 0, seconds <= interval_seconds and <= 300".into()));
            }
        }
        if let Some(o) = &cfg.otlp {
            o.options().map_err(|e| invalid(format!("[otlp]: {e}")))?;
        }
        if !(cfg.reconcile_seconds > 0.0)
            || !(cfg.stream_idle_timeout_seconds > 0.0)
            || cfg.max_series == 0
            || cfg.max_targets == 0
            || cfg.kubernetes_max_pods == 0
        {
            return Err(invalid(
                "reconcile_seconds, stream_idle_timeout_seconds, max_series, max_targets and kubernetes_max_pods must be positive"
                    .into(),
            ));
        }
        Ok(cfg)
    }

    /// The first rule that matches.
    pub fn rule_for(&self, p: &ProcessFacts) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(p))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
listen = "127.0.0.1:0"
[[rule]]
name = "llama.cpp"
comm = ["llama-server"]
profile = "llama.cpp"
[[rule]]
name = "vllm"
cmdline = ["*vllm.entrypoints*", "*vllm serve*"]
ports = [8000]
[[rule]]
name = "labelled"
pod_labels = { app = "tgi" }
"#;

    fn facts(comm: &str, cmdline: &str, ports: &[u16]) -> ProcessFacts {
        ProcessFacts { comm: comm.into(), cmdline: cmdline.into(), listening: ports.to_vec(), ..Default::default() }
    }

    #[test]
    fn rules_match_by_every_given_field() {
        let c = Config::parse(Path::new("t.toml"), TEXT).unwrap();
        assert_eq!(c.rule_for(&facts("llama-server", "", &[])).unwrap().name, "llama.cpp");
        assert_eq!(c.rule_for(&facts("python3", "python3 -m vllm.entrypoints.openai", &[8000])).unwrap().name, "vllm");
        assert!(c.rule_for(&facts("python3", "python3 -m vllm.entrypoints.openai", &[9000])).is_none(), "port");
        assert!(c.rule_for(&facts("bash", "bash", &[])).is_none());
        let mut p = facts("text-gen", "", &[]);
        p.pod_labels = Some([("app".to_string(), "tgi".to_string())].into());
        assert_eq!(c.rule_for(&p).unwrap().name, "labelled");
        assert_eq!((c.kubernetes, c.kubernetes_max_pods), (KubernetesMode::Auto, 1024));
        let c = Config::parse(Path::new("t.toml"), &format!("kubernetes = \"off\"\nkubernetes_max_pods = 8\n{TEXT}"));
        assert_eq!(c.map(|c| (c.kubernetes, c.kubernetes_max_pods)).unwrap(), (KubernetesMode::Off, 8));
    }

    #[test]
    fn stage_set_and_its_deprecated_name_profile() {
        let rule =
            |kv: &str| Config::parse(Path::new("c.toml"), &format!("[[rule]]\nname = \"x\"\ncomm=[\"a\"]\n{kv}\n"));
        assert_eq!(rule("stage_set = \"cuda\"").unwrap().rules[0].stage_set, "cuda");
        assert_eq!(rule("profile = \"cuda\"").unwrap().rules[0].stage_set, "cuda", "the old name still works");
        let e = rule("stage_set = \"nope\"").unwrap_err().to_string();
        assert!(e.contains("rule `x`") && e.contains("unknown stage set `nope`"), "{e}");
    }

    #[test]
    fn the_shipped_rules_find_the_python_engines_by_their_command_lines() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/config.toml");
        let c = Config::parse(&path, &std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = |comm: &str, cmdline: &str| c.rule_for(&facts(comm, cmdline, &[])).map(|r| r.name.clone());
        let llama = name("python3", "/venv/bin/python3 -m llama_cpp.server --model m.gguf --port 8000");
        assert_eq!(llama.as_deref(), Some("llama-cpp-python"));
        let sglang = name("python3", "python3 -m sglang.launch_server --model-path m --port 30000");
        assert_eq!(sglang.as_deref(), Some("sglang"));
        assert_eq!(name("python3", "python3 app.py"), None, "any other Python process is left alone");
    }

    #[test]
    fn otlp_section_is_checked_when_read() {
        let rule = "[[rule]]\nname = \"x\"\ncomm=[\"a\"]\n";
        let c = Config::parse(Path::new("c.toml"), &format!("[otlp]\nendpoint = \"http://127.0.0.1:4318\"\n{rule}"));
        let o = c.unwrap().otlp.unwrap().options().unwrap();
        assert_eq!(o.metrics_url, "http://127.0.0.1:4318/v1/metrics");
        assert_eq!(o.interval, std::time::Duration::from_secs(10));
        let e = Config::parse(Path::new("c.toml"), &format!("[otlp]\nendpoint = \"https://x\"\n{rule}"));
        assert!(e.unwrap_err().to_string().contains("[otlp]: OTLP endpoint `https://x`: https is not supported"));
        let e = Config::parse(Path::new("c.toml"), &format!("[otlp]\nendpoint = \"http://x\"\nbogus = 1\n{rule}"));
        assert!(e.unwrap_err().to_string().contains("bogus"));
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let e = Config::parse(Path::new("c.toml"), "listen = \"127.0.0.1:1\"\n").unwrap_err().to_string();
        assert!(e.contains("no [[rule]]"), "{e}");
        let e = Config::parse(Path::new("c.toml"), "[[rule]]\nname = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("matches every process"), "{e}");
        let e = Config::parse(Path::new("c.toml"), "[[rule]]\nname = \"x\"\ncomm=[\"a\"]\nprofile=\"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rule `x`") && e.contains("nope"), "{e}");
        let e = Config::parse(Path::new("c.toml"), "bogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::parse(Path::new("c.toml"), "kubernetes = \"maybe\"\n[[rule]]\nname = \"x\"\ncomm=[\"a\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auto") && e.contains("off"), "the modes are named: {e}");
    }
}
