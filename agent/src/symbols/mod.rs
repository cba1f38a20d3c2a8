//! Function symbols of ELF files and of running processes, for two users:
//!
//! - **uprobes** need a function's *file offset* in a specific file: [`resolve`] turns a user
//!   spec (`llama_decode`, `ns::tokenize`, `llama_*`) into concrete matches in an [`ElfSymbols`].
//! - **CPU flamegraphs** need sampled user addresses turned into `module` + `function`:
//!   [`Symbolizer`] reads `/proc/PID/maps`, loads and caches each module's symbols, and falls back
//!   to JIT perf maps (`/tmp/perf-PID.map`) for anonymous executable memory.
//!
//! Everything here is plain file parsing: no root, no BPF. Reading another process's files goes
//! through `/proc/PID/root` so binaries inside containers resolve, and deleted files through
//! `/proc/PID/map_files` (those two need the same privileges the agent has anyway).

mod cache;
mod demangle;
mod elf;
mod matcher;
mod perfmap;
mod process;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod testutil;

use std::path::PathBuf;

pub use cache::{Frame, Symbolizer, SymbolizerStats, JIT_MODULE};
pub use elf::{ElfSymbols, ElfType, LoadSegment, Symbol};
pub use matcher::{glob_match, resolve, SymbolMatch};
pub use perfmap::{PerfMap, PerfMapEntry};
pub use process::{
    addr_to_file_vaddr, modules, modules_with_root, parse_maps, parse_maps_line, read_maps, ExecRange, MapEntry,
    MapPath, Module, Perms,
};

#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error(
        "{path}: no such file (check the path; for a process in a container, look under /proc/PID/root/ \
         or pass the path as the process sees it together with its PID)"
    )]
    FileNotFound { path: PathBuf },
    #[error("cannot read {path}: {source} (files of another user's process need root or CAP_DAC_READ_SEARCH)")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is not an ELF file ({reason}); point at the native binary or shared library (.so) that \
         contains the function, not a script or wrapper"
    )]
    NotElf { path: PathBuf, reason: String },
    #[error(
        "{path} has no function symbols (it is stripped: .symtab is gone and .dynsym exports nothing); \
         use an unstripped build, install its debug package, or probe a shared library that exports the function"
    )]
    NoSymbols { path: PathBuf },
    #[error("empty symbol spec: give a function name such as `llama_decode` or a pattern such as `llama_*`")]
    EmptySpec,
    #[error("no function matching `{spec}` in {path}{}", suggestion_text(.suggestions, .stripped))]
    SymbolNotFound { spec: String, path: PathBuf, suggestions: Vec<String>, stripped: bool },
    #[error(
        "`{spec}` names a function in {path}, but it lies outside every loadable segment (is this an object \
         file rather than a linked binary or library?)"
    )]
    NotLoadable { spec: String, path: PathBuf },
    #[error("no such process: {pid} (is the PID right, and is it in this PID namespace?)")]
    NoSuchProcess { pid: u32 },
}

fn suggestion_text(suggestions: &[String], stripped: &bool) -> String {
    let mut text = String::new();
    if !suggestions.is_empty() {
        text.push_str("; did you mean: ");
        text.push_str(&suggestions.join(", "));
    }
    if *stripped {
        text.push_str(" (the file is stripped: only exported .dynsym functions are visible)");
    }
    text
}
