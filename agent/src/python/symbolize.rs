//! Code objects to frame names, read out of the live process (`/proc/PID/mem`): the code
//! object's `co_qualname`, `co_filename` and `co_firstlineno`, as `module.qualname (file:line)`.
//! Cached per (process, code object address); bounded (processes and names), with counters.
//! Only names of code are read: never locals, arguments or any other object of the program.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::detect::{detect, Detected, NotPython};

/// Names cached, all processes together; past this, names are read each time (counted).
const MAX_NAMES: usize = 65536;
/// Processes with an open memory handle and a layout.
const MAX_PROCS: usize = 256;
/// Longest name or file name read.
const MAX_STRING: usize = 512;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PySymbolizerStats {
    /// Frames named from the cache.
    pub cached: u64,
    /// Frames named by reading the process (cold).
    pub read: u64,
    /// Code objects that could not be read or did not look like one.
    pub failed: u64,
    /// Names not cached because the cache was full.
    pub cache_full: u64,
}

#[derive(Debug, Clone)]
struct Proc {
    detected: Option<Detected>,
    mem: Option<Arc<std::fs::File>>,
}

/// Names Python frames of the processes it is asked about.
#[derive(Debug, Default, Clone)]
pub struct PySymbolizer {
    procs: HashMap<u32, Proc>,
    names: HashMap<(u32, u64), Arc<str>>,
    pub stats: PySymbolizerStats,
}

impl PySymbolizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops what is kept about `pid` (it exited, or exec'ed another program).
    pub fn forget_pid(&mut self, pid: u32) {
        self.procs.remove(&pid);
        self.names.retain(|(p, _), _| *p != pid);
    }

    /// The frame name of the code object at `code` in `pid`: `module.qualname (file:line)`,
    /// or `[unknown python code]` when it cannot be read.
    pub fn name(&mut self, pid: u32, code: u64) -> Arc<str> {
        if let Some(n) = self.names.get(&(pid, code)) {
            self.stats.cached += 1;
            return Arc::clone(n);
        }
        let name: Arc<str> = match self.read_name(pid, code) {
            Some(n) => {
                self.stats.read += 1;
                n.into()
            }
            None => {
                self.stats.failed += 1;
                return "[unknown python code]".into();
            }
        };
        if self.names.len() < MAX_NAMES {
            self.names.insert((pid, code), Arc::clone(&name));
        } else {
            self.stats.cache_full += 1;
        }
        name
    }

    fn proc(&mut self, pid: u32) -> &Proc {
        if !self.procs.contains_key(&pid) && self.procs.len() >= MAX_PROCS {
            // Bounded: start over rather than grow (processes come back on their next sample).
            self.procs.clear();
        }
        self.procs.entry(pid).or_insert_with(|| Proc {
            detected: detect(pid).map_err(|e: NotPython| e).ok(),
            mem: std::fs::File::open(format!("/proc/{pid}/mem")).ok().map(Arc::new),
        })
    }

    fn read_name(&mut self, pid: u32, code: u64) -> Option<String> {
        let p = self.proc(pid);
        let (layout, mem) = (p.detected.as_ref()?.layout, p.mem.clone()?);
        let mut head = [0u8; 256];
        mem.read_exact_at(&mut head, code).ok()?;
        let word = |off: u64| u64::from_le_bytes(head[off as usize..off as usize + 8].try_into().unwrap_or_default());
        let qualname = read_str(&mem, layout, word(layout.code_qualname))?;
        let filename = read_str(&mem, layout, word(layout.code_filename))?;
        let off = layout.code_firstlineno as usize;
        let line = i32::from_le_bytes(head[off..off + 4].try_into().unwrap_or_default());
        Some(frame_name(&qualname, &filename, line))
    }
}

/// `module.qualname (file:line)`; no `;` (the folded format's separator).
pub(super) fn frame_name(qualname: &str, filename: &str, line: i32) -> String {
    let base = filename.rsplit('/').next().unwrap_or(filename);
    let module = if filename.starts_with('<') {
        // `<frozen runpy>`, `<string>`
        filename.trim_matches(|c| c == '<' || c == '>').rsplit(' ').next().unwrap_or(filename).to_string()
    } else {
        let stem = base.strip_suffix(".py").unwrap_or(base);
        if stem == "__init__" {
            filename.rsplit('/').nth(1).unwrap_or(stem).to_string()
        } else {
            stem.to_string()
        }
    };
    format!("{module}.{qualname} ({base}:{line})").replace(';', ":")
}

/// A `str` object's text (compact strings: every string a code object names is one).
fn read_str(mem: &std::fs::File, layout: &super::Layout, addr: u64) -> Option<String> {
    if addr == 0 {
        return None;
    }
    let mut head = [0u8; 40];
    mem.read_exact_at(&mut head, addr).ok()?;
    let length = u64::from_le_bytes(head[16..24].try_into().ok()?) as usize;
    let state = u32::from_le_bytes(head[32..36].try_into().ok()?);
    let (kind, compact, ascii) = ((state >> 2) & 7, state >> 5 & 1 == 1, state >> 6 & 1 == 1);
    if !compact || !matches!(kind, 1 | 2 | 4) {
        return None;
    }
    let n = length.min(MAX_STRING);
    let start = if ascii { layout.ascii_size } else { layout.compact_size };
    let mut data = vec![0u8; n * kind as usize];
    mem.read_exact_at(&mut data, addr + start).ok()?;
    let text: String = match kind {
        1 if ascii => String::from_utf8_lossy(&data).into_owned(),
        1 => data.iter().map(|&b| b as char).collect(),
        2 => char::decode_utf16(data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])))
            .map(|c| c.unwrap_or('?'))
            .collect(),
        _ => data
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('?'))
            .collect(),
    };
    Some(text.chars().filter(|c| !c.is_control()).collect())
}
