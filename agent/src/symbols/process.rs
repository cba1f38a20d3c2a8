//! What a process has mapped: `/proc/PID/maps` parsed, and grouped into the executable modules
//! that sampled addresses can fall in.

use std::path::{Path, PathBuf};

use super::{ElfSymbols, SymbolError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s` (MAP_SHARED) rather than `p`.
    pub shared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapPath {
    /// A file as the process sees it (inside its mount namespace). `deleted` when the kernel
    /// appended ` (deleted)`: replaced on disk after being mapped (upgrades), or a memfd.
    File { path: PathBuf, deleted: bool },
    /// No name: heap-like memory, and where JITs put code.
    Anonymous,
    /// `[vdso]`, `[heap]`, `[stack]`, `[vvar]`, `[anon:NAME]`, …
    Pseudo(String),
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub perms: Perms,
    /// Offset in the file of the byte mapped at `start`.
    pub offset: u64,
    pub dev: (u32, u32),
    pub inode: u64,
    pub path: MapPath,
}

/// One executable mapping of a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecRange {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
}

impl ExecRange {
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end
    }
}

/// A file (or the vDSO) with code mapped into a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// As the process sees it (`/usr/lib/…/libc.so.6`), or `[vdso]`.
    pub path: PathBuf,
    /// Where this process (the agent) can open the same file: under the root prefix, or through
    /// `/proc/PID/map_files/` when the file was deleted. None for the vDSO (read from memory).
    pub open_path: Option<PathBuf>,
    pub deleted: bool,
    pub vdso: bool,
    pub dev: (u32, u32),
    pub inode: u64,
    /// Executable mappings, in address order.
    pub ranges: Vec<ExecRange>,
}

/// Parses one maps line; None for anything malformed (the format has been stable since 2.6, so
/// a bad line means a truncated read, not a new format).
pub fn parse_maps_line(line: &str) -> Option<MapEntry> {
    let mut rest = line.trim_end_matches('\n');
    let mut field = || {
        let trimmed = rest.trim_start_matches(' ');
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (f, r) = trimmed.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field()?;
    let perms = field()?.as_bytes();
    let offset = field()?;
    let dev = field()?;
    let inode = field()?;
    // The path is the remainder (it may contain spaces), after the column padding.
    let name = rest.trim_start_matches(' ');

    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    if perms.len() < 4 {
        return None;
    }
    let path = if name.is_empty() {
        MapPath::Anonymous
    } else if name.starts_with('/') {
        match name.strip_suffix(" (deleted)") {
            Some(p) => MapPath::File { path: PathBuf::from(p), deleted: true },
            None => MapPath::File { path: PathBuf::from(name), deleted: false },
        }
    } else {
        MapPath::Pseudo(name.to_string())
    };
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: Perms {
            read: perms[0] == b'r',
            write: perms[1] == b'w',
            exec: perms[2] == b'x',
            shared: perms[3] == b's',
        },
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: (u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?),
        inode: inode.parse().ok()?,
        path,
    })
}

pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    text.lines().filter_map(parse_maps_line).collect()
}

pub fn read_maps(pid: u32) -> Result<Vec<MapEntry>, SymbolError> {
    let path = PathBuf::from(format!("/proc/{pid}/maps"));
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(parse_maps(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SymbolError::NoSuchProcess { pid }),
        Err(e) => Err(SymbolError::Io { path, source: e }),
    }
}

/// Executable modules of `pid`, opened through `/proc/PID/root` so files inside containers
/// resolve to the container's copy.
pub fn modules(pid: u32) -> Result<Vec<Module>, SymbolError> {
    modules_with_root(pid, &default_root(pid))
}

pub(super) fn default_root(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root"))
}

/// [`modules`] with an explicit root prefix (`/` to open paths as they are).
pub fn modules_with_root(pid: u32, root: &Path) -> Result<Vec<Module>, SymbolError> {
    Ok(group_modules(pid, root, &read_maps(pid)?))
}

pub(super) fn group_modules(pid: u32, root: &Path, maps: &[MapEntry]) -> Vec<Module> {
    let mut modules: Vec<Module> = Vec::new();
    for m in maps.iter().filter(|m| m.perms.exec) {
        let range = ExecRange { start: m.start, end: m.end, file_offset: m.offset };
        let (path, deleted, vdso) = match &m.path {
            MapPath::File { path, deleted } => (path.clone(), *deleted, false),
            MapPath::Pseudo(name) if name == "[vdso]" => (PathBuf::from(name), false, true),
            // Anonymous code is JIT output (perf maps cover it); [vsyscall] is a fixed legacy page.
            _ => continue,
        };
        if let Some(existing) =
            modules.iter_mut().find(|x| x.dev == m.dev && x.inode == m.inode && x.path == path && x.deleted == deleted)
        {
            existing.ranges.push(range);
            continue;
        }
        let open_path = if vdso {
            None
        } else if deleted {
            // The name no longer leads to these bytes (or a newer file); the kernel still
            // holds the mapped file and hands it out here.
            Some(PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end)))
        } else {
            Some(root.join(path.strip_prefix("/").unwrap_or(&path)))
        };
        modules.push(Module { path, open_path, deleted, vdso, dev: m.dev, inode: m.inode, ranges: vec![range] });
    }
    modules
}

/// A runtime address in `range` as an ELF virtual address of the module's file: first the file
/// offset the mapping puts there, then back through the PT_LOAD headers. This removes the load
/// bias without having to know it, and works for ET_EXEC and ET_DYN alike.
pub fn addr_to_file_vaddr(elf: &ElfSymbols, range: &ExecRange, addr: u64) -> Option<u64> {
    if !range.contains(addr) {
        return None;
    }
    elf.vaddr_for_offset(addr - range.start + range.file_offset)
}

/// The PID `pid` has inside its own PID namespace (what a containerized JIT writes into its
/// `/tmp/perf-PID.map` name). Falls back to `pid`.
pub(super) fn namespace_pid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
            line.split_whitespace().last()?.parse().ok()
        })
        .unwrap_or(pid)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0a1c38000-55d0a1c3a000 r--p 00000000 fe:00 247030                     /usr/bin/cat
55d0a1c3a000-55d0a1c3f000 r-xp 00002000 fe:00 247030                     /usr/bin/cat
55d0c1cad000-55d0c1cce000 rw-p 00000000 00:00 0                          [heap]
7f25dbbc9000-7f25dbbeb000 rwxp 00000000 00:00 0 
7f25dbc74000-7f25dbdca000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
7f25dbe00000-7f25dbe10000 r-xp 00000000 fe:00 326280                     /opt/my app/lib v2.so (deleted)
7f25dbe20000-7f25dbe21000 r-xp 00000000 00:01 4242                       /memfd:jit (deleted)
7fff1a3fd000-7fff1a3ff000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
garbage line
";

    #[test]
    fn maps_lines_parse_including_odd_paths() {
        let maps = parse_maps(SAMPLE);
        assert_eq!(maps.len(), 9, "the garbage line is skipped");
        let text = &maps[1];
        assert_eq!((text.start, text.end, text.offset), (0x55d0a1c3a000, 0x55d0a1c3f000, 0x2000));
        assert_eq!(text.perms, Perms { read: true, write: false, exec: true, shared: false });
        assert_eq!(text.dev, (0xfe, 0));
        assert_eq!(text.inode, 247030);
        assert_eq!(text.path, MapPath::File { path: "/usr/bin/cat".into(), deleted: false });
        assert_eq!(maps[2].path, MapPath::Pseudo("[heap]".into()));
        assert_eq!(maps[3].path, MapPath::Anonymous);
        assert_eq!(maps[5].path, MapPath::File { path: "/opt/my app/lib v2.so".into(), deleted: true });
    }

    #[test]
    fn modules_group_exec_mappings_and_route_opens() {
        let modules = group_modules(77, Path::new("/proc/77/root"), &parse_maps(SAMPLE));
        let paths: Vec<&str> = modules.iter().map(|m| m.path.to_str().unwrap()).collect();
        assert_eq!(
            paths,
            ["/usr/bin/cat", "/usr/lib/x86_64-linux-gnu/libc.so.6", "/opt/my app/lib v2.so", "/memfd:jit", "[vdso]"]
        );
        assert_eq!(modules[0].open_path.as_deref(), Some(Path::new("/proc/77/root/usr/bin/cat")));
        assert_eq!(modules[0].ranges, [ExecRange { start: 0x55d0a1c3a000, end: 0x55d0a1c3f000, file_offset: 0x2000 }]);
        assert!(modules[2].deleted);
        assert_eq!(modules[2].open_path.as_deref(), Some(Path::new("/proc/77/map_files/7f25dbe00000-7f25dbe10000")));
        assert!(modules[4].vdso && modules[4].open_path.is_none());
    }

    #[test]
    fn own_executable_is_a_module_and_addresses_map_back_to_symbols() {
        let pid = std::process::id();
        let modules = modules(pid).unwrap();
        let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
        let module = modules.iter().find(|m| m.path == exe).unwrap_or_else(|| panic!("{exe:?} not in {modules:?}"));
        let elf = ElfSymbols::load(module.open_path.as_ref().unwrap()).unwrap();

        let addr = crate::symbols::testutil::marker_function_for_symbols_test as *const () as usize as u64;
        let range = module.ranges.iter().find(|r| r.contains(addr)).unwrap();
        let vaddr = addr_to_file_vaddr(&elf, range, addr).unwrap();
        let sym = elf.lookup_addr(vaddr).unwrap();
        assert!(sym.demangled().ends_with("::marker_function_for_symbols_test"), "{sym:?}");
        assert_eq!(sym.vaddr(), vaddr, "a function pointer is the function's first byte");
        assert!(modules.iter().any(|m| m.vdso), "every Linux process has a vDSO");
    }

    #[test]
    fn missing_process_is_reported_as_such() {
        // PIDs are below 2^22 on Linux, so this one cannot exist.
        let err = modules(u32::MAX - 1).unwrap_err();
        assert!(matches!(err, SymbolError::NoSuchProcess { .. }), "{err}");
    }
}
