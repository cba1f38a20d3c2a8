//! Stage definitions: `--stage NAME=SPEC` and stage sets, named lists of them kept as data files
//! (`agent/stage-sets/*.stages`), not in code.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageDef {
    pub name: String,
    /// The spec as the user wrote it.
    pub spec: String,
    /// Library (file name prefix, or a full path) the symbol must come from.
    pub library: Option<String>,
    /// Symbol name or glob.
    pub symbol: String,
    /// Calls ending before the request's first token are reported under this name.
    pub prefill_name: Option<String>,
}

impl StageDef {
    /// A Python stage (`py:GLOB`): measured by sampling (`stages::sampled`), never probed.
    pub fn is_python(&self) -> bool {
        self.spec.starts_with(super::sampled::PY_PREFIX)
    }

    /// The glob of a Python stage (after `py:`).
    pub fn python_glob(&self) -> Option<&str> {
        self.spec.strip_prefix(super::sampled::PY_PREFIX)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageSetError {
    #[error("--stage wants NAME=SPEC (e.g. decode=libllama.so:llama_decode), got `{0}`")]
    BadStageArg(String),
    /// `word`: what the user called it (`stage set`, or `profile` through the deprecated flag).
    #[error("unknown {word} `{name}`: built-in stage sets are {}; or give a path to a .stages file", BUILTIN.iter().map(|b| b.0).collect::<Vec<_>>().join(", "))]
    UnknownStageSet { name: String, word: &'static str },
    #[error("{source_name}:{line}: {reason}")]
    BadLine { source_name: String, line: usize, reason: String },
    #[error("cannot read stage set {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("stage name `{0}` is used twice")]
    Duplicate(String),
}

const BUILTIN: &[(&str, &str)] = &[
    ("llama.cpp", include_str!("../../stage-sets/llama.cpp.stages")),
    ("cuda", include_str!("../../stage-sets/cuda.stages")),
    ("vllm", include_str!("../../stage-sets/vllm.stages")),
    ("sglang", include_str!("../../stage-sets/sglang.stages")),
    ("llama-cpp-python", include_str!("../../stage-sets/llama-cpp-python.stages")),
];

/// Splits `LIB:SYMBOL` from a plain symbol. A C++ `::` is not a separator; the part before the
/// colon must look like a library (`.so`, `.so.N`) or a path.
pub fn split_spec(spec: &str) -> (Option<String>, String) {
    let bytes = spec.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b':' {
            if bytes.get(i + 1) == Some(&b':') {
                i += 2;
                continue;
            }
            let lib = &spec[..i];
            if lib.contains(".so") || lib.contains('/') {
                return (Some(lib.to_string()), spec[i + 1..].to_string());
            }
            break;
        }
        i += 1;
    }
    (None, spec.to_string())
}

fn def(name: &str, spec: &str, prefill_name: Option<String>) -> StageDef {
    let (library, symbol) = split_spec(spec);
    StageDef { name: name.to_string(), spec: spec.to_string(), library, symbol, prefill_name }
}

pub fn parse_stage_arg(arg: &str) -> Result<StageDef, StageSetError> {
    let (name, spec) = arg.split_once('=').ok_or_else(|| StageSetError::BadStageArg(arg.into()))?;
    let (name, spec) = (name.trim(), spec.trim());
    if name.is_empty()
        || spec.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(StageSetError::BadStageArg(arg.into()));
    }
    if spec.strip_prefix(super::sampled::PY_PREFIX).is_some_and(str::is_empty) {
        return Err(StageSetError::BadStageArg(arg.into()));
    }
    Ok(def(name, spec, None))
}

pub fn parse_stage_set(source_name: &str, text: &str) -> Result<Vec<StageDef>, StageSetError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: &str| StageSetError::BadLine {
            source_name: source_name.into(),
            line: i + 1,
            reason: reason.into(),
        };
        let mut cols = line.split_whitespace();
        let name = cols.next().ok_or_else(|| bad("missing stage name"))?;
        let spec = cols.next().ok_or_else(|| bad("missing function spec after the stage name"))?;
        let mut prefill = None;
        if spec == super::sampled::PY_PREFIX {
            return Err(bad("`py:` wants a glob on Python functions (py:*Scheduler.schedule)"));
        }
        for opt in cols {
            match opt.split_once('=') {
                Some(("prefill", n)) if !n.is_empty() => prefill = Some(n.to_string()),
                _ => return Err(bad(&format!("unknown option `{opt}` (known: prefill=NAME)"))),
            }
        }
        out.push(def(name, spec, prefill));
    }
    Ok(out)
}

/// A built-in stage set by name, or a stage set file by path.
pub fn load_stage_set(name_or_path: &str) -> Result<Vec<StageDef>, StageSetError> {
    if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
        return parse_stage_set(name_or_path, text);
    }
    if Path::new(name_or_path).exists() {
        let text = std::fs::read_to_string(name_or_path)
            .map_err(|source| StageSetError::Io { path: name_or_path.into(), source })?;
        return parse_stage_set(name_or_path, &text);
    }
    Err(StageSetError::UnknownStageSet { name: name_or_path.into(), word: "stage set" })
}

/// Stage sets first (`--stage-set`, then the deprecated `--profile`, whose errors use its word),
/// then `--stage`s; names must be unique (they key the report).
pub fn collect(
    sets: &[String],
    deprecated_profiles: &[String],
    stages: &[String],
) -> Result<Vec<StageDef>, StageSetError> {
    let mut defs = Vec::new();
    for s in sets {
        defs.extend(load_stage_set(s)?);
    }
    for p in deprecated_profiles {
        defs.extend(load_stage_set(p).map_err(|e| match e {
            StageSetError::UnknownStageSet { name, .. } => StageSetError::UnknownStageSet { name, word: "profile" },
            e => e,
        })?);
    }
    for s in stages {
        defs.push(parse_stage_arg(s)?);
    }
    let mut names = std::collections::HashSet::new();
    for d in &defs {
        if !names.insert(d.name.clone()) {
            return Err(StageSetError::Duplicate(d.name.clone()));
        }
    }
    Ok(defs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_split_libraries_not_cpp_scopes() {
        assert_eq!(split_spec("libllama.so:llama_decode"), (Some("libllama.so".into()), "llama_decode".into()));
        assert_eq!(split_spec("libcudart.so.12:cudaMemcpy"), (Some("libcudart.so.12".into()), "cudaMemcpy".into()));
        assert_eq!(split_spec("/opt/srv:main"), (Some("/opt/srv".into()), "main".into()));
        assert_eq!(split_spec("*::tokenize"), (None, "*::tokenize".into()));
        assert_eq!(split_spec("ns::Tok::run"), (None, "ns::Tok::run".into()));
        assert_eq!(split_spec("libx.so:ns::f"), (Some("libx.so".into()), "ns::f".into()));
    }

    #[test]
    fn builtin_stage_sets_parse() {
        let llama = load_stage_set("llama.cpp").unwrap();
        let decode = llama.iter().find(|d| d.name == "decode").unwrap();
        assert_eq!(decode.library.as_deref(), Some("libllama.so"));
        assert_eq!(decode.prefill_name.as_deref(), Some("prefill"));
        assert!(load_stage_set("cuda").unwrap().iter().any(|d| d.symbol == "cudaLaunchKernel"));
        assert!(load_stage_set("nope").unwrap_err().to_string().contains("llama.cpp, cuda"));
        for set in ["vllm", "sglang", "llama-cpp-python"] {
            let defs = load_stage_set(set).unwrap();
            assert!(!defs.is_empty() && defs.iter().all(|d| d.is_python() && d.prefill_name.is_none()), "{set}");
        }
        let gen = load_stage_set("llama-cpp-python").unwrap();
        assert!(gen.iter().any(|d| d.python_glob() == Some("*Llama.generate")));
    }

    #[test]
    fn an_unknown_stage_set_is_named_as_the_user_did() {
        let e = collect(&["nope".into()], &[], &[]).unwrap_err().to_string();
        assert!(e.contains("unknown stage set `nope`"), "{e}");
        let e = collect(&[], &["nope".into()], &[]).unwrap_err().to_string();
        assert!(e.contains("unknown profile `nope`"), "the deprecated --profile's word: {e}");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(parse_stage_arg("decode").is_err());
        assert!(parse_stage_arg("=x").is_err());
        assert!(parse_stage_arg("s=py:").is_err());
        let py = parse_stage_arg("sched=py:*Scheduler.schedule").unwrap();
        assert!(py.is_python() && py.library.is_none());
        assert_eq!(py.python_glob(), Some("*Scheduler.schedule"));
        assert_eq!(parse_stage_arg("d=llama_decode").unwrap().symbol, "llama_decode");
        let e = parse_stage_set("p", "a b c=d\n").unwrap_err().to_string();
        assert!(e.contains("p:1: unknown option"), "{e}");
        assert!(collect(&[], &[], &["a=x".into(), "a=y".into()]).is_err());
    }
}
