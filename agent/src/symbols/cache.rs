//! Sampled addresses → `module` + `function`, with bounded caches so a profiler can symbolize
//! every sample of a long run without re-reading files.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::hash::Hash;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::perfmap::PerfMap;
use super::process::{self, ExecRange, Module};
use super::ElfSymbols;

/// A miss (an address in no known mapping) re-reads maps at most this often per process: new
/// `dlopen`s and JIT output show up, but a stream of bad addresses cannot cost a read each.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Labels frames from perf maps: the code is in anonymous memory, so there is no file.
pub const JIT_MODULE: &str = "[jit]";

/// One symbolized address. Every field may be unknown; `Display` renders what is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The module as the process sees it (`/usr/lib/…/libc.so.6`, `[vdso]`, `[jit]`).
    pub module: Option<String>,
    /// Demangled function name.
    pub function: Option<String>,
    /// Bytes into `function` when known; else the ELF virtual address in `module` (what
    /// `addr2line -e module` takes) when the module is known; else the raw address.
    pub offset: u64,
}

impl Frame {
    fn unknown(addr: u64) -> Self {
        Frame { module: None, function: None, offset: addr }
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.function, &self.module) {
            (Some(func), _) => f.write_str(func),
            (None, Some(module)) => {
                let base = Path::new(module).file_name().map_or(module.as_str(), |n| n.to_str().unwrap_or(module));
                write!(f, "{base}+{:#x}", self.offset)
            }
            (None, None) => f.write_str("[unknown]"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SymbolizerStats {
    pub elf_loads: u64,
    /// Files that could not be read or parsed (remembered, so they are tried once).
    pub elf_load_failures: u64,
    pub elf_evictions: u64,
    pub pid_evictions: u64,
    pub maps_reads: u64,
    pub perf_map_loads: u64,
    pub cached_elfs: usize,
    /// Approximate heap held by cached symbol tables ([`ElfSymbols::approx_heap_bytes`]).
    pub cached_bytes: usize,
    pub cached_pids: usize,
}

/// Identity of a file's content: a replaced file (new inode) or one rewritten in place (new
/// mtime or size) is a different entry, and hard links or bind mounts of one file share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ElfKey {
    File {
        dev: u64,
        ino: u64,
        mtime_ns: i64,
        size: u64,
    },
    /// The vDSO is the same image in every process of one ABI; its size tells 64- from 32-bit.
    Vdso {
        size: u64,
    },
}

struct PidState {
    modules: Vec<Module>,
    /// (start, end, module index, range index), sorted by start.
    index: Vec<(u64, u64, usize, usize)>,
    /// Per module: None = not looked at yet; Some(None) = unusable (stat or read failed).
    keys: Vec<Option<Option<ElfKey>>>,
    maps_read_at: Instant,
    perf_map: Option<PerfMap>,
    perf_map_stamp: Option<(i64, u64)>,
    perf_map_checked_at: Option<Instant>,
}

/// Cached symbolization for many processes. Not thread-safe by design: the profiler owns one
/// and feeds it from its single drain loop.
pub struct Symbolizer {
    root: Option<PathBuf>,
    elfs: Lru<ElfKey, Option<Arc<ElfSymbols>>>,
    max_bytes: usize,
    cached_bytes: usize,
    pids: Lru<u32, PidState>,
    stats: SymbolizerStats,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    /// 256 files, 256 MiB of symbol tables (libLLVM's take ~30 MiB), 1024 processes.
    pub fn new() -> Self {
        Self::with_limits(256, 256 << 20, 1024)
    }

    /// `max_bytes` bounds the memory of cached symbol tables; the most recently used file is
    /// always kept even if it alone exceeds it.
    pub fn with_limits(max_files: usize, max_bytes: usize, max_pids: usize) -> Self {
        Symbolizer {
            root: None,
            elfs: Lru::new(max_files.max(1)),
            max_bytes,
            cached_bytes: 0,
            pids: Lru::new(max_pids.max(1)),
            stats: SymbolizerStats::default(),
        }
    }

    /// Open every module under `root` instead of `/proc/PID/root` (e.g. `/` when the agent
    /// shares the target's mount namespace and /proc/PID/root is not accessible).
    pub fn with_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    pub fn stats(&self) -> SymbolizerStats {
        SymbolizerStats {
            cached_elfs: self.elfs.len(),
            cached_bytes: self.cached_bytes,
            cached_pids: self.pids.len(),
            ..self.stats
        }
    }

    /// Drop what is known about `pid` (it exited, or it `exec`ed). Its files stay cached: other
    /// processes usually map them too.
    pub fn forget_pid(&mut self, pid: u32) {
        self.pids.remove(&pid);
    }

    pub fn symbolize(&mut self, pid: u32, addr: u64) -> Frame {
        if self.pids.get(&pid).is_none() {
            let Some(state) = self.read_pid(pid) else { return Frame::unknown(addr) };
            if self.pids.insert(pid, state) {
                self.stats.pid_evictions += 1;
            }
        }
        let mut hit = self.pids.get(&pid).and_then(|s| find_range(&s.index, addr));
        if hit.is_none() && self.pids.get(&pid).is_some_and(|s| s.maps_read_at.elapsed() >= REFRESH_INTERVAL) {
            if let Some(fresh) = self.read_pid(pid) {
                if let Some(state) = self.pids.get(&pid) {
                    // Keep the perf map: it is refreshed on its own schedule.
                    state.modules = fresh.modules;
                    state.index = fresh.index;
                    state.keys = fresh.keys;
                    state.maps_read_at = fresh.maps_read_at;
                    hit = find_range(&state.index, addr);
                }
            }
        }
        match hit {
            Some((module, range)) => self.symbolize_in_module(pid, module, range, addr),
            None => self.symbolize_jit(pid, addr),
        }
    }

    fn read_pid(&mut self, pid: u32) -> Option<PidState> {
        let maps = process::read_maps(pid).ok()?;
        self.stats.maps_reads += 1;
        let root = self.root.clone().unwrap_or_else(|| process::default_root(pid));
        let modules = process::group_modules(pid, &root, &maps);
        let mut index: Vec<(u64, u64, usize, usize)> = modules
            .iter()
            .enumerate()
            .flat_map(|(mi, m)| m.ranges.iter().enumerate().map(move |(ri, r)| (r.start, r.end, mi, ri)))
            .collect();
        index.sort_unstable();
        Some(PidState {
            keys: vec![None; modules.len()],
            modules,
            index,
            maps_read_at: Instant::now(),
            perf_map: None,
            perf_map_stamp: None,
            perf_map_checked_at: None,
        })
    }

    fn symbolize_in_module(&mut self, pid: u32, module: usize, range: usize, addr: u64) -> Frame {
        let Some(state) = self.pids.get(&pid) else { return Frame::unknown(addr) };
        let Some(m) = state.modules.get(module) else { return Frame::unknown(addr) };
        let Some(&r) = m.ranges.get(range) else { return Frame::unknown(addr) };
        let name = m.path.to_string_lossy().into_owned();
        let file_offset = addr - r.start + r.file_offset;
        let key = match state.keys.get(module).copied() {
            Some(Some(known)) => known,
            _ => {
                let key = identify(m, &r);
                if let Some(slot) = state.keys.get_mut(module) {
                    *slot = Some(key);
                }
                key
            }
        };
        let module_only = |offset| Frame { module: Some(name.clone()), function: None, offset };
        let Some(elf) = key.and_then(|key| self.cached_or_load(pid, module, key, &r)) else {
            return module_only(file_offset);
        };
        let Some(vaddr) = process::addr_to_file_vaddr(&elf, &r, addr) else { return module_only(file_offset) };
        match elf.lookup_addr(vaddr) {
            Some(sym) => {
                Frame { module: Some(name), function: Some(sym.demangled().to_string()), offset: vaddr - sym.vaddr() }
            }
            None => module_only(vaddr),
        }
    }

    /// The cached symbols for `key`, loading them on first use (or after eviction). Failed file
    /// loads are cached too, so a bad file is tried once, not once per sample.
    fn cached_or_load(&mut self, pid: u32, module: usize, key: ElfKey, range: &ExecRange) -> Option<Arc<ElfSymbols>> {
        if let Some(entry) = self.elfs.get(&key) {
            return entry.clone();
        }
        let loaded = match key {
            ElfKey::Vdso { .. } => match read_vdso(pid, range) {
                Ok(elf) => elf,
                Err(_) => {
                    // Reading another process's memory follows ptrace rules, so it may fail for
                    // this pid and work for the next: remember the failure per pid, not per key.
                    if let Some(slot) = self.pids.get(&pid).and_then(|s| s.keys.get_mut(module)) {
                        *slot = Some(None);
                    }
                    return None;
                }
            },
            ElfKey::File { .. } => {
                let path = self.pids.get(&pid)?.modules.get(module)?.open_path.clone()?;
                match ElfSymbols::load(&path) {
                    Ok(elf) => elf,
                    Err(_) => {
                        self.stats.elf_load_failures += 1;
                        self.store(key, None);
                        return None;
                    }
                }
            }
        };
        self.stats.elf_loads += 1;
        let elf = Arc::new(loaded);
        self.store(key, Some(Arc::clone(&elf)));
        Some(elf)
    }

    fn store(&mut self, key: ElfKey, elf: Option<Arc<ElfSymbols>>) {
        self.cached_bytes += weight(&elf);
        if let Some((_, old)) = self.elfs.insert_evicting(key, elf) {
            self.cached_bytes -= weight(&old);
            self.stats.elf_evictions += 1;
        }
        while self.cached_bytes > self.max_bytes && self.elfs.len() > 1 {
            let Some((_, old)) = self.elfs.evict_oldest() else { break };
            self.cached_bytes -= weight(&old);
            self.stats.elf_evictions += 1;
        }
    }

    fn symbolize_jit(&mut self, pid: u32, addr: u64) -> Frame {
        let root = self.root.clone().unwrap_or_else(|| process::default_root(pid));
        let Some(state) = self.pids.get(&pid) else { return Frame::unknown(addr) };
        let due = state.perf_map_checked_at.is_none_or(|t| t.elapsed() >= REFRESH_INTERVAL);
        if due {
            state.perf_map_checked_at = Some(Instant::now());
            let path = perf_map_path(pid, &root);
            match path.as_ref().and_then(|p| Some((p, std::fs::metadata(p).ok()?))) {
                Some((p, meta)) => {
                    let stamp = (mtime_ns(&meta), meta.size());
                    if state.perf_map_stamp != Some(stamp) {
                        state.perf_map = PerfMap::load(p).ok();
                        state.perf_map_stamp = Some(stamp);
                        self.stats.perf_map_loads += 1;
                    }
                }
                None => {
                    state.perf_map = None;
                    state.perf_map_stamp = None;
                }
            }
        }
        match state.perf_map.as_ref().and_then(|m| m.lookup(addr)) {
            Some(e) => Frame {
                module: Some(JIT_MODULE.to_string()),
                function: Some(e.name.to_string()),
                offset: addr - e.start,
            },
            None => Frame::unknown(addr),
        }
    }
}

/// Which cache entry a module's file is; None when it cannot even be stat'ed (gone, or no
/// access), which then symbolizes as module-only frames.
fn identify(module: &Module, range: &ExecRange) -> Option<ElfKey> {
    if module.vdso {
        return Some(ElfKey::Vdso { size: range.end - range.start });
    }
    let meta = std::fs::metadata(module.open_path.as_ref()?).ok()?;
    Some(ElfKey::File { dev: meta.dev(), ino: meta.ino(), mtime_ns: mtime_ns(&meta), size: meta.size() })
}

fn find_range(index: &[(u64, u64, usize, usize)], addr: u64) -> Option<(usize, usize)> {
    let i = index.partition_point(|e| e.0 <= addr).checked_sub(1)?;
    let (_, end, module, range) = index[i];
    (addr < end).then_some((module, range))
}

fn weight(elf: &Option<Arc<ElfSymbols>>) -> usize {
    // Failed loads still occupy a slot; give them a nominal size so they age out with the rest.
    elf.as_ref().map_or(64, |e| e.approx_heap_bytes().max(64))
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec())
}

/// The JIT writes `/tmp/perf-<its own PID>.map` in its own mount and PID namespaces; look there
/// first, then on the host's /tmp (the agent may run in the same namespaces).
fn perf_map_path(pid: u32, root: &Path) -> Option<PathBuf> {
    let ns_pid = process::namespace_pid(pid);
    let inside = root.join(format!("tmp/perf-{ns_pid}.map"));
    let host = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    [inside, host].into_iter().find(|p| p.exists())
}

fn read_vdso(pid: u32, range: &ExecRange) -> std::io::Result<ElfSymbols> {
    let len = usize::try_from(range.end - range.start)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "vdso too large"))?;
    let mut buf = vec![0u8; len];
    File::open(format!("/proc/{pid}/mem"))?.read_exact_at(&mut buf, range.start)?;
    ElfSymbols::parse("[vdso]", &buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// A map with least-recently-used eviction. Eviction scans for the oldest entry: O(n), fine for
/// the few hundred entries these caches hold, and it needs no linked list.
struct Lru<K, V> {
    map: HashMap<K, (V, u64)>,
    cap: usize,
    tick: u64,
}

impl<K: Eq + Hash + Clone, V> Lru<K, V> {
    fn new(cap: usize) -> Self {
        Lru { map: HashMap::new(), cap, tick: 0 }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn get(&mut self, key: &K) -> Option<&mut V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(key).map(|(v, used)| {
            *used = tick;
            v
        })
    }

    /// Inserts; returns true when another entry had to go.
    fn insert(&mut self, key: K, value: V) -> bool {
        self.insert_evicting(key, value).is_some()
    }

    /// Inserts; returns the entry evicted to make room, if any.
    fn insert_evicting(&mut self, key: K, value: V) -> Option<(K, V)> {
        self.tick += 1;
        let evicted =
            if !self.map.contains_key(&key) && self.map.len() >= self.cap { self.evict_oldest() } else { None };
        self.map.insert(key, (value, self.tick));
        evicted
    }

    fn evict_oldest(&mut self) -> Option<(K, V)> {
        let oldest = self.map.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone())?;
        self.map.remove(&oldest).map(|(v, _)| (oldest, v))
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|(v, _)| v)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::symbols::testutil::marker_function_for_symbols_test;

    #[test]
    fn symbolizes_a_function_of_this_process() {
        let mut symbolizer = Symbolizer::new();
        let pid = std::process::id();
        let addr = marker_function_for_symbols_test as *const () as usize as u64;
        let frame = symbolizer.symbolize(pid, addr);
        let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(frame.module.as_deref(), exe.to_str());
        assert!(frame.function.as_deref().unwrap_or("").ends_with("::marker_function_for_symbols_test"), "{frame:?}");
        assert_eq!(frame.offset, 0);

        // Inside the function: same name, offset counts from its start.
        let frame = symbolizer.symbolize(pid, addr + 1);
        assert!(frame.to_string().ends_with("::marker_function_for_symbols_test"), "{frame}");
        assert_eq!(frame.offset, 1);

        let stats = symbolizer.stats();
        assert_eq!(stats.maps_reads, 1, "{stats:?}");
        assert_eq!(stats.elf_loads, 1, "second lookup hits the cache: {stats:?}");
        assert_eq!(stats.cached_pids, 1);

        symbolizer.forget_pid(pid);
        assert_eq!(symbolizer.stats().cached_pids, 0);
        assert!(symbolizer.symbolize(pid, addr).function.is_some());
        assert_eq!(symbolizer.stats().maps_reads, 2);
        assert_eq!(symbolizer.stats().elf_loads, 1, "the file itself stayed cached");
    }

    #[test]
    fn symbolizes_libc_and_the_vdso() {
        let mut symbolizer = Symbolizer::new();
        let pid = std::process::id();
        let getpid = libc::getpid as *const () as usize as u64;
        let frame = symbolizer.symbolize(pid, getpid);
        assert!(frame.module.as_deref().unwrap_or("").contains("libc"), "{frame:?}");
        assert!(frame.function.as_deref().unwrap_or("").contains("getpid"), "{frame:?}");

        let vdso = process::modules(pid).unwrap().into_iter().find(|m| m.vdso).unwrap();
        let r = vdso.ranges[0];
        let elf = read_vdso(pid, &r).unwrap();
        let sym = elf.symbols().iter().find(|s| s.name().contains("clock_gettime")).unwrap();
        let off = elf.file_offset(sym.vaddr()).unwrap();
        let frame = symbolizer.symbolize(pid, r.start + off - r.file_offset);
        assert_eq!(frame.module.as_deref(), Some("[vdso]"));
        assert!(frame.function.as_deref().unwrap_or("").contains("clock_gettime"), "{frame:?}");
    }

    #[test]
    fn unknown_addresses_and_processes_degrade_gracefully() {
        let mut symbolizer = Symbolizer::new();
        let frame = symbolizer.symbolize(std::process::id(), 8);
        assert_eq!(frame, Frame { module: None, function: None, offset: 8 });
        assert_eq!(frame.to_string(), "[unknown]");
        assert_eq!(symbolizer.symbolize(u32::MAX - 1, 0x1234), Frame::unknown(0x1234));
        let module_only = Frame { module: Some("/usr/lib/libfoo.so".into()), function: None, offset: 0x10 };
        assert_eq!(module_only.to_string(), "libfoo.so+0x10");
    }

    #[test]
    fn jit_addresses_resolve_through_the_perf_map() {
        let pid = std::process::id();
        // Executable anonymous memory, as a JIT would have.
        // SAFETY: fresh anonymous mapping, unmapped at the end of the test.
        let len = 4096;
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let start = ptr as u64;
        let root = crate::symbols::testutil::temp_dir("jitroot");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::write(
            root.join(format!("tmp/perf-{}.map", process::namespace_pid(pid))),
            format!("{start:x} 100 py::forward:/srv/model.py\n"),
        )
        .unwrap();
        let mut symbolizer = Symbolizer::new().with_root(&root);
        let frame = symbolizer.symbolize(pid, start + 0x10);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(ptr, len) };
        assert_eq!(
            frame,
            Frame { module: Some(JIT_MODULE.into()), function: Some("py::forward:/srv/model.py".into()), offset: 0x10 }
        );
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut lru: Lru<u32, &str> = Lru::new(2);
        assert!(!lru.insert(1, "a"));
        assert!(!lru.insert(2, "b"));
        assert!(lru.get(&1).is_some());
        assert!(lru.insert(3, "c"), "full: 2 was used least recently");
        assert!(lru.get(&2).is_none());
        assert!(lru.get(&1).is_some() && lru.get(&3).is_some());
        assert!(!lru.insert(3, "c2"), "replacing is not evicting");
    }

    #[test]
    fn symbol_budget_evicts_files() {
        let mut symbolizer = Symbolizer::with_limits(16, 1, 16);
        let pid = std::process::id();
        symbolizer.symbolize(pid, marker_function_for_symbols_test as *const () as usize as u64);
        symbolizer.symbolize(pid, libc::getpid as *const () as usize as u64);
        let stats = symbolizer.stats();
        assert_eq!(stats.elf_loads, 2, "{stats:?}");
        assert_eq!(stats.cached_elfs, 1, "{stats:?}");
        assert!(stats.elf_evictions >= 1, "{stats:?}");
    }
}
