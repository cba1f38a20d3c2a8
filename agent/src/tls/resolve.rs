//! Finds OpenSSL's read/write functions in a process's mapped files: shared libraries named
//! `libssl*` and the executable itself (a binary that links OpenSSL statically and exports its
//! symbols, such as Node). Each file is searched once per process, so a rescan after a dlopen
//! costs one read of `/proc/PID/maps`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use agent_common::tls::{FREE_SYMBOL, SYMBOLS};

use crate::symbols::{self, ElfSymbols};

/// One file to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTarget {
    /// As the target sees it.
    pub module: PathBuf,
    /// Where the agent opens it.
    pub open_path: PathBuf,
    /// (file offset, call kind) of each read/write function found.
    pub calls: Vec<(u64, u32)>,
    pub free: Option<u64>,
    /// A Go binary: never given return probes.
    pub go: bool,
    /// (device, inode): one file, whoever maps it.
    pub file: FileKey,
}

pub type FileKey = ((u32, u32), u64);

pub struct TlsResolver {
    pid: u32,
    searched: HashSet<((u32, u32), u64)>,
    /// Candidate files the last scan opened (with or without the functions).
    pub opened: Vec<FileKey>,
}

/// Is this file worth opening? libssl by name, `libnode` (embedders), or the executable.
fn candidate(path: &Path, exe: Option<&Path>) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with("libssl") || name.starts_with("libnode") || exe.is_some_and(|e| e == path)
}

/// The read/write functions `elf` exports (global symbols with these exact names).
pub fn functions(elf: &ElfSymbols) -> (Vec<(u64, u32)>, Option<u64>) {
    let offset = |want: &str| {
        elf.symbols()
            .iter()
            .find(|s| !s.is_local() && s.name() == want && s.vaddr() != 0)
            .and_then(|s| elf.file_offset(s.vaddr()))
    };
    let calls = SYMBOLS.iter().filter_map(|&(name, kind)| offset(name).map(|o| (o, kind))).collect();
    (calls, offset(FREE_SYMBOL))
}

impl TlsResolver {
    pub fn new(pid: u32) -> Self {
        Self { pid, searched: HashSet::new(), opened: Vec::new() }
    }

    /// Files mapped since the last scan that export the functions; files in `skip` (already
    /// handled for every process: the daemon's shared probes) are not opened.
    pub fn scan(&mut self, skip: &HashSet<FileKey>) -> Vec<TlsTarget> {
        let Ok(modules) = symbols::modules(self.pid) else { return Vec::new() };
        // As the process sees it (a container's path), the way /proc/PID/maps names it.
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.pid)).ok();
        let mut out = Vec::new();
        self.opened.clear();
        for m in &modules {
            let key = (m.dev, m.inode);
            if m.vdso || skip.contains(&key) || !self.searched.insert(key) || !candidate(&m.path, exe.as_deref()) {
                continue;
            }
            let Some(open) = &m.open_path else { continue };
            self.opened.push(key);
            let elf = match ElfSymbols::load(open) {
                Ok(e) => e,
                Err(e) => {
                    log::debug!("TLS: skipping {}: {e}", m.path.display());
                    continue;
                }
            };
            let (calls, free) = functions(&elf);
            if calls.is_empty() {
                continue;
            }
            out.push(TlsTarget {
                module: m.path.clone(),
                open_path: open.clone(),
                calls,
                free,
                go: elf.is_go(),
                file: key,
            });
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_libssl_libnode_and_the_executable_are_opened() {
        let exe = Path::new("/usr/bin/node");
        assert!(candidate(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3"), Some(exe)));
        assert!(candidate(Path::new("/opt/lib/libssl.so.1.1"), None));
        assert!(candidate(exe, Some(exe)));
        assert!(!candidate(Path::new("/usr/lib/x86_64-linux-gnu/libcrypto.so.3"), Some(exe)));
        assert!(!candidate(Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"), Some(exe)));
    }

    /// The system's libssl (when installed: CI has it, Python's `ssl` uses it) exports all four
    /// functions and `SSL_free`, at distinct offsets inside the file.
    #[test]
    fn the_system_libssl_exports_every_probed_function() {
        let Some(lib) = ["/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/x86_64-linux-gnu/libssl.so.3"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            eprintln!("no libssl.so.3 here; skipped");
            return;
        };
        let elf = ElfSymbols::load(lib).unwrap();
        let (calls, free) = functions(&elf);
        let len = std::fs::metadata(lib).unwrap().len();
        assert_eq!(calls.len(), SYMBOLS.len(), "{calls:?}");
        let mut offsets: Vec<u64> = calls.iter().map(|c| c.0).chain(free).collect();
        assert!(offsets.iter().all(|&o| o > 0 && o < len));
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), SYMBOLS.len() + 1);
    }
}
