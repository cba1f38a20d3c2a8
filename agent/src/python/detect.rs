//! Which CPython a process runs, and where its runtime state is: the mapped file that defines
//! `_PyRuntime` (the `python3.x` executable, or `libpython3.x.so` when the interpreter is built
//! shared), its load bias, and the version from `Py_Version` in the process's memory.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSegment, ObjectSymbol};

use super::layout::{layout_for, Layout};
use crate::symbols::{read_maps, MapEntry, MapPath};

/// A process that runs CPython, as the sampling program needs it.
#[derive(Debug, Clone)]
pub struct Detected {
    /// The file that holds the interpreter (as the process sees it).
    pub file: PathBuf,
    pub version: (u8, u8, u8),
    /// Runtime address of `_PyRuntime`.
    pub runtime: u64,
    pub layout: &'static Layout,
}

/// Why a process's Python frames cannot be walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotPython {
    /// Nothing Python is mapped: not an interpreter (nothing to say).
    NoInterpreter,
    /// An interpreter is mapped but cannot be unwound (said once, with the reason).
    Cannot(String),
}

/// Looks at `pid`'s mappings for a CPython interpreter.
pub fn detect(pid: u32) -> Result<Detected, NotPython> {
    let maps = read_maps(pid).map_err(|e| NotPython::Cannot(format!("cannot read its mappings: {e}")))?;
    let candidates = interpreter_files(&maps);
    if candidates.is_empty() {
        return Err(NotPython::NoInterpreter);
    }
    let mut reasons = Vec::new();
    for (path, entries) in candidates {
        match find_runtime(pid, &path, &entries) {
            Ok(d) => return Ok(d),
            Err(r) => reasons.push(format!("{}: {r}", path.display())),
        }
    }
    Err(NotPython::Cannot(reasons.join("; ")))
}

/// Mapped files named like a CPython interpreter (`python3.11`, `libpython3.12.so.1.0`), with
/// their mappings; the shared library first (an executable linked to it defines nothing).
fn interpreter_files(maps: &[MapEntry]) -> Vec<(PathBuf, Vec<MapEntry>)> {
    let mut out: Vec<(PathBuf, Vec<MapEntry>)> = Vec::new();
    for m in maps {
        let MapPath::File { path, .. } = &m.path else { continue };
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if !(name.starts_with("libpython3") || name.starts_with("python3")) {
            continue;
        }
        match out.iter_mut().find(|(p, _)| p == path) {
            Some((_, v)) => v.push(m.clone()),
            None => out.push((path.clone(), vec![m.clone()])),
        }
    }
    out.sort_by_key(|(p, _)| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("lib")));
    out
}

fn find_runtime(pid: u32, path: &Path, entries: &[MapEntry]) -> Result<Detected, String> {
    let data = read_file(pid, path, entries)?;
    let elf = object::File::parse(&*data).map_err(|e| format!("not an ELF file we can read: {e}"))?;
    let find = |name: &str| {
        elf.dynamic_symbols()
            .chain(elf.symbols())
            .find(|s| s.name() == Ok(name) && s.address() != 0)
            .map(|s| s.address())
    };
    let runtime = find("_PyRuntime").ok_or("no _PyRuntime symbol (stripped, or not CPython)")?;
    let version_at = find("Py_Version");
    // Load bias from the mapping of the lowest file offset and the segment holding it.
    let first = entries.iter().min_by_key(|m| m.offset).ok_or("not mapped")?;
    let vaddr = elf
        .segments()
        .find_map(|s| {
            let (off, size) = s.file_range();
            (first.offset >= off && first.offset - off < size.max(1)).then(|| s.address() + (first.offset - off))
        })
        .ok_or("its mapping matches no segment")?;
    let bias = first.start.wrapping_sub(vaddr);
    let version = match version_at {
        Some(v) => {
            let mut b = [0u8; 4];
            read_memory(pid, v.wrapping_add(bias), &mut b).map_err(|e| format!("cannot read Py_Version: {e}"))?;
            let hex = u32::from_le_bytes(b);
            ((hex >> 24) as u8, (hex >> 16) as u8, (hex >> 8) as u8)
        }
        None => version_from_name(path).ok_or("no Py_Version symbol and no version in the file name")?,
    };
    let layout = layout_for(version.0, version.1)?;
    Ok(Detected { file: path.to_path_buf(), version, runtime: runtime.wrapping_add(bias), layout })
}

/// `python3.10`, `libpython3.10.so.1.0` → (3, 10, 0); 3.10 and older have no `Py_Version`.
fn version_from_name(path: &Path) -> Option<(u8, u8, u8)> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("lib").unwrap_or(name).strip_prefix("python3.")?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((3, minor.parse().ok()?, 0))
}

/// The file's bytes, through the process's root (its mount namespace), else through
/// `/proc/PID/map_files` (a file deleted or replaced since it was mapped).
fn read_file(pid: u32, path: &Path, entries: &[MapEntry]) -> Result<Vec<u8>, String> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let via_root = PathBuf::from(format!("/proc/{pid}/root")).join(rel);
    if let Ok(d) = std::fs::read(&via_root) {
        return Ok(d);
    }
    let m = &entries[0];
    let via_map = PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
    std::fs::read(&via_map).map_err(|e| format!("cannot read the file: {e}"))
}

/// Reads `buf.len()` bytes of `pid`'s memory at `addr`.
pub(super) fn read_memory(pid: u32, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let f = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    f.read_exact_at(buf, addr)
}
