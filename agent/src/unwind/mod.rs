//! Unwind tables for the sampling program (see `agent-ebpf/src/unwind.rs`): per file, its
//! `.eh_frame` compiled to sorted rows (`compile`); per process, its executable mappings with
//! each one's load bias and the place of its file's rows in the kernel's row array. Files are
//! identified by (device, inode), so processes mapping the same library share one table; a table
//! is freed when no followed process maps its file any more. Everything is bounded: the row
//! array (a file that does not fit goes without, counted, and is walked by frame pointers) and
//! the mappings per process.

mod compile;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use agent_common::unwind::{Mapping, ProcMappings, RowChunk, UnwindRow, CHUNK_ROWS, MAX_MAPPINGS};

pub use compile::{compile, FileTable, Segment};

use crate::symbols::{MapPath, Module};

#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    #[error("not an ELF file we can read: {0}")]
    Elf(String),
    #[error("architecture {0} is not supported (x86-64 only)")]
    Unsupported(String),
    #[error("no .eh_frame or .debug_frame")]
    NoCfi,
    #[error("malformed call-frame information: {0}")]
    Cfi(String),
    #[error("address {0:#x} does not fit the 32-bit table format")]
    TooLarge(u64),
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// The row array's size in chunks: `INFERSCOPE_UNWIND_TABLE_KIB` (2 KiB to 1 GiB of kernel
/// memory, allocated at load, in whole 2 KiB chunks of 256 rows) or the default 8 MiB (1M rows:
/// llama-server's 13 files take 147k). A file that does not fit is counted (`table_full`) and
/// walked by frame pointers.
pub fn table_chunks() -> u32 {
    let default = agent_common::limits::UNWIND_CHUNKS;
    let Ok(v) = std::env::var("INFERSCOPE_UNWIND_TABLE_KIB") else { return default };
    let chunk_kib = std::mem::size_of::<RowChunk>() as u32 / 1024;
    match v.trim().parse::<u32>() {
        Ok(kib @ 2..=1_048_576) => kib / chunk_kib,
        _ => {
            log::warn!("INFERSCOPE_UNWIND_TABLE_KIB={v:?} is not 2..=1048576; using 8 MiB");
            default
        }
    }
}

/// A mapped file: (device, inode); the vDSO is (0, 0), 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    dev: (u32, u32),
    inode: u64,
}

struct LoadedFile {
    /// First chunk and chunk count in `UNWIND_ROWS`; None: no table (walk frame pointers).
    chunks: Option<(u32, u32)>,
    rows: u32,
    segments: Vec<Segment>,
    /// Followed processes that map it.
    users: HashSet<u32>,
}

/// Table figures for the report (`cpu.unwind_tables`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TableStats {
    /// Kernel memory of the row array, allocated at load whether used or not
    /// (`INFERSCOPE_UNWIND_TABLE_KIB`, default 8 MiB).
    pub capacity_bytes: u64,
    /// Files with a table in the kernel now.
    pub files: u64,
    /// Rows in the kernel now.
    pub rows: u64,
    /// Kernel memory those rows take (whole chunks).
    pub map_bytes: u64,
    /// Files without a usable table (no CFI, not readable, malformed): walked by frame pointers.
    pub files_without_cfi: u64,
    /// Files left without a table because the row array was full.
    pub table_full: u64,
    /// Executable mappings left out because a process had more than the table holds.
    pub mappings_dropped: u64,
    /// Time spent compiling tables.
    pub build_ms: u64,
}

/// What to write into the kernel for one process: new files' rows, then its mapping table.
pub struct Update {
    pub chunks: Vec<(u32, RowChunk)>,
    pub mappings: Box<ProcMappings>,
    /// Chunks freed (no process maps their file any more); nothing points at them now.
    pub freed: u32,
}

pub struct Tables {
    files: HashMap<FileId, LoadedFile>,
    /// Free chunk ranges (start, count) below `next`.
    free: Vec<(u32, u32)>,
    next: u32,
    capacity: u32,
    /// Per process: the modules last seen, and the files they use.
    procs: HashMap<u32, (Vec<Module>, HashSet<FileId>)>,
    /// The vDSO image (the same in every process: this kernel's).
    vdso: Option<Vec<u8>>,
    pub stats: TableStats,
}

impl Tables {
    pub fn new(capacity_chunks: u32) -> Self {
        Self {
            files: HashMap::new(),
            free: Vec::new(),
            next: 0,
            capacity: capacity_chunks,
            procs: HashMap::new(),
            vdso: None,
            stats: TableStats {
                capacity_bytes: u64::from(capacity_chunks) * std::mem::size_of::<RowChunk>() as u64,
                ..TableStats::default()
            },
        }
    }

    /// Looks at `pid`'s executable mappings again; `None` when they are the same as last time.
    /// New files get their tables compiled (once per file, shared by every process).
    pub fn refresh(&mut self, pid: u32) -> Result<Option<Update>, crate::symbols::SymbolError> {
        let modules = crate::symbols::modules(pid)?;
        if self.procs.get(&pid).is_some_and(|(m, _)| *m == modules) {
            return Ok(None);
        }
        let mut chunks = Vec::new();
        let mut entries: Vec<Mapping> = Vec::new();
        let mut used = HashSet::new();
        for m in &modules {
            let id = if m.vdso { FileId { dev: (0, 0), inode: 0 } } else { FileId { dev: m.dev, inode: m.inode } };
            if !self.files.contains_key(&id) {
                let file = self.load(m, &mut chunks);
                self.files.insert(id, file);
            }
            let Some(file) = self.files.get_mut(&id) else { continue };
            file.users.insert(pid);
            used.insert(id);
            for r in &m.ranges {
                let (rows_start, rows_len) = file.chunks.map_or((0, 0), |(c, _)| (c * CHUNK_ROWS as u32, file.rows));
                let Some(vaddr) = compile::vaddr_for_offset(&file.segments, r.file_offset) else {
                    entries.push(Mapping { start: r.start, end: r.end, bias: 0, rows_start: 0, rows_len: 0 });
                    continue;
                };
                let bias = r.start.wrapping_sub(vaddr);
                entries.push(Mapping { start: r.start, end: r.end, bias, rows_start, rows_len });
            }
        }
        entries.sort_by_key(|e| e.start);
        if entries.len() > MAX_MAPPINGS {
            self.stats.mappings_dropped += (entries.len() - MAX_MAPPINGS) as u64;
            entries.truncate(MAX_MAPPINGS);
        }
        let mut mappings = Box::new(ProcMappings {
            count: entries.len() as u32,
            _pad: 0,
            entries: [Mapping::default(); MAX_MAPPINGS],
        });
        mappings.entries[..entries.len()].copy_from_slice(&entries);
        let old = self.procs.insert(pid, (modules, used.clone())).map(|(_, u)| u).unwrap_or_default();
        let freed = old.difference(&used).map(|id| self.release(*id, pid)).sum();
        Ok(Some(Update { chunks, mappings, freed }))
    }

    /// The process is gone or no longer profiled: its files lose a user.
    pub fn forget(&mut self, pid: u32) -> u32 {
        let Some((_, used)) = self.procs.remove(&pid) else { return 0 };
        used.into_iter().map(|id| self.release(id, pid)).sum()
    }

    pub fn follows(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    /// Drops `pid` from a file's users; frees the file's rows when it was the last. Returns the
    /// chunks freed.
    fn release(&mut self, id: FileId, pid: u32) -> u32 {
        let Some(file) = self.files.get_mut(&id) else { return 0 };
        file.users.remove(&pid);
        if !file.users.is_empty() {
            return 0;
        }
        let file = self.files.remove(&id).expect("present");
        let Some((start, count)) = file.chunks else { return 0 };
        self.stats.files -= 1;
        self.stats.rows -= u64::from(file.rows);
        self.stats.map_bytes -= u64::from(count) * std::mem::size_of::<RowChunk>() as u64;
        self.free.push((start, count));
        count
    }

    /// Compiles a file's table and places its rows (appended to `chunks`).
    fn load(&mut self, m: &Module, chunks: &mut Vec<(u32, RowChunk)>) -> LoadedFile {
        let started = Instant::now();
        let data = if m.vdso { self.vdso_image() } else { read(m) };
        let table = data.and_then(|d| compile(&d));
        self.stats.build_ms += started.elapsed().as_millis() as u64;
        let mut file = LoadedFile { chunks: None, rows: 0, segments: Vec::new(), users: HashSet::new() };
        let table = match table {
            Ok(t) if !t.rows.is_empty() => t,
            Ok(t) => {
                file.segments = t.segments;
                self.stats.files_without_cfi += 1;
                return file;
            }
            Err(e) => {
                log::debug!("no unwind table for {}: {e}; its frames are walked by frame pointers", m.path.display());
                self.stats.files_without_cfi += 1;
                return file;
            }
        };
        file.segments = table.segments;
        let count = table.rows.len().div_ceil(CHUNK_ROWS) as u32;
        let Some(start) = self.allocate(count) else {
            log::debug!("unwind row array full: {} is walked by frame pointers", m.path.display());
            self.stats.table_full += 1;
            return file;
        };
        for (i, rows) in table.rows.chunks(CHUNK_ROWS).enumerate() {
            // Rows past the file's end are never searched (the search is bounded by `rows_len`).
            let mut chunk = RowChunk { rows: [UnwindRow::default(); CHUNK_ROWS] };
            chunk.rows[..rows.len()].copy_from_slice(rows);
            chunks.push((start + i as u32, chunk));
        }
        file.chunks = Some((start, count));
        file.rows = table.rows.len() as u32;
        self.stats.files += 1;
        self.stats.rows += u64::from(file.rows);
        self.stats.map_bytes += u64::from(count) * std::mem::size_of::<RowChunk>() as u64;
        file
    }

    /// `count` contiguous chunks: the first free range that fits, else fresh ones.
    fn allocate(&mut self, count: u32) -> Option<u32> {
        if let Some(i) = self.free.iter().position(|&(_, n)| n >= count) {
            let (start, n) = self.free[i];
            if n == count {
                self.free.swap_remove(i);
            } else {
                self.free[i] = (start + count, n - count);
            }
            return Some(start);
        }
        (self.next + count <= self.capacity).then(|| {
            self.next += count;
            self.next - count
        })
    }

    /// This kernel's vDSO, read from the agent's own mapping (every process maps the same one).
    fn vdso_image(&mut self) -> Result<Vec<u8>, UnwindError> {
        if let Some(v) = &self.vdso {
            return Ok(v.clone());
        }
        let path = PathBuf::from("/proc/self/maps");
        let maps = std::fs::read_to_string(&path).map_err(|e| UnwindError::Io(path, e))?;
        let m = crate::symbols::parse_maps(&maps)
            .into_iter()
            .find(|m| matches!(&m.path, MapPath::Pseudo(n) if n == "[vdso]"))
            .ok_or(UnwindError::NoCfi)?;
        let mut buf = vec![0u8; (m.end - m.start) as usize];
        let mem = PathBuf::from("/proc/self/mem");
        let f = std::fs::File::open(&mem).map_err(|e| UnwindError::Io(mem.clone(), e))?;
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, m.start).map_err(|e| UnwindError::Io(mem, e))?;
        self.vdso = Some(buf.clone());
        Ok(buf)
    }
}

fn read(m: &Module) -> Result<Vec<u8>, UnwindError> {
    let path = m.open_path.clone().unwrap_or_else(|| m.path.clone());
    std::fs::read(&path).map_err(|e| UnwindError::Io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::unwind::row_kind;

    #[test]
    fn row_space_is_bounded_and_freed_ranges_are_reused_first_fit() {
        let mut t = Tables::new(10);
        assert_eq!(t.allocate(4), Some(0));
        assert_eq!(t.allocate(4), Some(4));
        assert_eq!(t.allocate(4), None, "2 chunks left");
        t.free.push((0, 4));
        assert_eq!(t.allocate(3), Some(0));
        assert_eq!(t.allocate(2), Some(8));
        assert_eq!(t.allocate(1), Some(3));
        assert_eq!(t.allocate(1), None);
    }

    #[inline(never)]
    fn a_function_of_this_binary() -> u64 {
        std::hint::black_box(7)
    }

    /// The agent's own process: every executable mapping gets a place, the test binary's rows
    /// say "CFA = rsp + 8" at the entry of one of its functions (found through the mapping's
    /// load bias), an unchanged process is not written again, and forgetting it frees its rows.
    #[test]
    fn own_process_tables_place_a_function_entry() {
        let mut t = Tables::new(limits_chunks());
        let pid = std::process::id();
        let u = t.refresh(pid).expect("own maps").expect("first look writes");
        let entries = &u.mappings.entries[..u.mappings.count as usize];
        assert!(entries.windows(2).all(|w| w[0].start < w[1].start));
        let addr = a_function_of_this_binary as fn() -> u64 as usize as u64;
        assert_eq!(a_function_of_this_binary(), 7);
        let m = entries.iter().find(|m| addr >= m.start && addr < m.end).expect("mapped");
        assert!(m.rows_len > 0, "the test binary has .eh_frame");
        let row = |i: u32| {
            let (c, r) = (i / CHUNK_ROWS as u32, i as usize % CHUNK_ROWS);
            u.chunks.iter().find(|(idx, _)| *idx == c).expect("uploaded").1.rows[r]
        };
        let vaddr = (addr - m.bias) as u32;
        let (mut lo, mut hi) = (m.rows_start, m.rows_start + m.rows_len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if row(mid).pc <= vaddr {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let r = row(lo - 1);
        assert_eq!((r.kind, r.cfa_offset), (row_kind::CFA_RSP, 8), "{r:?} at a function's entry");
        assert!(t.stats.files >= 2 && t.stats.map_bytes > 0, "{:?}", t.stats);
        assert!(t.refresh(pid).expect("own maps").is_none(), "nothing changed");
        let bytes = t.stats.map_bytes;
        let freed = t.forget(pid);
        assert_eq!(u64::from(freed) * std::mem::size_of::<RowChunk>() as u64, bytes);
        assert_eq!((t.stats.files, t.stats.rows, t.stats.map_bytes), (0, 0, 0));
    }

    fn limits_chunks() -> u32 {
        agent_common::limits::UNWIND_CHUNKS
    }
}
