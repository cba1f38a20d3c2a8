//! Turns stage definitions into concrete probe locations in a running process: every mapped
//! module (executable and shared objects) is searched once; modules that appear later (dlopen —
//! CUDA libraries arrive this way) are searched when a rescan finds them.

use std::collections::HashSet;
use std::path::PathBuf;

use super::stage_set::StageDef;
use crate::symbols::{self, ElfSymbols, Module, SymbolError};

/// Most functions one glob may attach to; more is almost always a mistake (and costs probes).
pub const MAX_MATCHES_PER_STAGE: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub stage: u32,
    /// As the target sees it.
    pub module: PathBuf,
    /// Where the agent opens it (through /proc/PID/root).
    pub open_path: PathBuf,
    pub file_offset: u64,
    pub function: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("stage `{stage}`: {source}")]
    Symbol { stage: String, source: SymbolError },
    #[error(
        "stage `{stage}`: no function matching `{spec}` in the executable or any of {modules} loaded libraries{hint}"
    )]
    NotFound { stage: String, spec: String, modules: usize, hint: String },
    #[error(
        "stage `{stage}`: {module} is a Go binary; return probes would corrupt its moving goroutine stacks, so \
         inferscope refuses to time functions in it"
    )]
    GoBinary { stage: String, module: String },
    #[error("stage `{stage}`: `{spec}` matches {count} functions (limit {MAX_MATCHES_PER_STAGE}); narrow the pattern")]
    TooMany { stage: String, spec: String, count: usize },
}

/// Symbol tables shared by every resolver in this process (the daemon resolves the same
/// executable and libc for each new server process): keyed by (device, inode, size, mtime).
const ELF_CACHE_ENTRIES: usize = 64;
type ElfKey = ((u32, u32), u64, u64, i64);
static ELF_CACHE: std::sync::Mutex<Vec<(ElfKey, std::sync::Arc<ElfSymbols>)>> = std::sync::Mutex::new(Vec::new());

fn load_cached(m: &Module, open: &std::path::Path) -> Result<std::sync::Arc<ElfSymbols>, SymbolError> {
    use std::os::unix::fs::MetadataExt as _;
    let key = std::fs::metadata(open).ok().map(|md| (m.dev, m.inode, md.size(), md.mtime()));
    if let Some(key) = key {
        let cache = ELF_CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, e)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(e.clone());
        }
    }
    let elf = std::sync::Arc::new(ElfSymbols::load(open)?);
    if let Some(key) = key {
        let mut cache = ELF_CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= ELF_CACHE_ENTRIES {
            cache.remove(0); // oldest first
        }
        cache.push((key, elf.clone()));
    }
    Ok(elf)
}

pub struct StageResolver {
    pid: u32,
    defs: Vec<StageDef>,
    /// (dev, inode) of modules already searched.
    searched: HashSet<((u32, u32), u64)>,
    /// Stages that found at least one function.
    found: Vec<bool>,
    pub modules_searched: usize,
}

fn library_matches(lib: &str, module: &Module) -> bool {
    if lib.contains('/') {
        return module.path == std::path::Path::new(lib);
    }
    module.path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(lib))
}

impl StageResolver {
    pub fn new(pid: u32, defs: Vec<StageDef>) -> Self {
        let found = vec![false; defs.len()];
        Self { pid, defs, searched: HashSet::new(), found, modules_searched: 0 }
    }

    pub fn defs(&self) -> &[StageDef] {
        &self.defs
    }

    /// Stages bound to a library that is not loaded yet.
    pub fn pending(&self) -> Vec<&StageDef> {
        self.defs.iter().zip(&self.found).filter(|(d, f)| !**f && !d.is_python()).map(|(d, _)| d).collect()
    }

    /// Searches modules not searched before. On the first scan, a plain symbol (no library) that
    /// matches nowhere is an error with near matches; a `LIB:SYMBOL` whose library is not loaded
    /// waits for it; a library that is loaded but lacks the symbol is an error.
    pub fn scan(&mut self, first: bool) -> Result<Vec<Attachment>, StageError> {
        let modules = symbols::modules(self.pid).map_err(|source| StageError::Symbol { stage: "*".into(), source })?;
        let fresh: Vec<&Module> = modules
            .iter()
            .filter(|m| !m.vdso && m.open_path.is_some() && !self.searched.contains(&(m.dev, m.inode)))
            .collect();
        let mut out = Vec::new();
        let mut near: Vec<Vec<String>> = vec![Vec::new(); self.defs.len()];
        let mut stripped: Vec<String> = Vec::new();
        for m in &fresh {
            let Some(open) = &m.open_path else { continue };
            let elf = match load_cached(m, open) {
                Ok(e) => e,
                Err(e) => {
                    log::debug!("skipping {}: {e}", m.path.display());
                    continue;
                }
            };
            self.modules_searched += 1;
            for (i, d) in self.defs.iter().enumerate() {
                if d.is_python() {
                    continue; // sampled, not probed (`stages::sampled`)
                }
                if let Some(lib) = &d.library {
                    if !library_matches(lib, m) {
                        continue;
                    }
                }
                match symbols::resolve(&elf, &d.symbol) {
                    Ok(matches) => {
                        if elf.is_go() {
                            return Err(StageError::GoBinary {
                                stage: d.name.clone(),
                                module: m.path.display().to_string(),
                            });
                        }
                        if matches.len() > MAX_MATCHES_PER_STAGE {
                            return Err(StageError::TooMany {
                                stage: d.name.clone(),
                                spec: d.spec.clone(),
                                count: matches.len(),
                            });
                        }
                        self.found[i] = true;
                        out.extend(matches.into_iter().map(|mt| Attachment {
                            stage: i as u32,
                            module: m.path.clone(),
                            open_path: open.clone(),
                            file_offset: mt.file_offset,
                            function: mt.demangled,
                        }));
                    }
                    Err(SymbolError::SymbolNotFound { suggestions, .. }) if d.library.is_none() => {
                        near[i].extend(suggestions);
                    }
                    Err(SymbolError::NoSymbols { path }) if d.library.is_none() => {
                        if !stripped.contains(&m.path.display().to_string()) {
                            let _ = path;
                            stripped.push(m.path.display().to_string());
                        }
                    }
                    Err(source) => return Err(StageError::Symbol { stage: d.name.clone(), source }),
                }
            }
        }
        for m in &fresh {
            self.searched.insert((m.dev, m.inode));
        }
        if first {
            for (i, d) in self.defs.iter().enumerate() {
                if d.library.is_none() && !self.found[i] && !d.is_python() {
                    near[i].sort();
                    near[i].dedup();
                    near[i].truncate(5);
                    let mut hint = if near[i].is_empty() {
                        String::new()
                    } else {
                        format!("; did you mean: {}", near[i].join(", "))
                    };
                    if !stripped.is_empty() {
                        hint.push_str(&format!(
                            "; {} is stripped (no .symtab, nothing exported in .dynsym): use an unstripped build or \
                             name a library that exports the function",
                            stripped.join(", ")
                        ));
                    }
                    return Err(StageError::NotFound {
                        stage: d.name.clone(),
                        spec: d.spec.clone(),
                        modules: fresh.len(),
                        hint,
                    });
                }
            }
        }
        Ok(out)
    }
}
