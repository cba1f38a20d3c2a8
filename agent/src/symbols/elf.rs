//! Function symbols and loadable segments of one ELF file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, Sym};
use object::Endianness;

use super::SymbolError;

/// One function symbol. Names are `Box<str>`: no spare capacity, which adds up over the
/// hundreds of thousands of symbols of a C++ library.
#[derive(Debug, Clone)]
pub struct Symbol {
    vaddr: u64,
    size: u64,
    name: Box<str>,
    /// Demangled on first use: C++ demangling is most of the cost of loading a big library
    /// (over a second for libLLVM), and a profile only ever names a few thousand functions.
    /// The inner `None` means demangling leaves the name unchanged (C), saving the copy.
    demangled: OnceLock<Option<Box<str>>>,
    local: bool,
}

impl Symbol {
    /// Virtual address as written in the ELF file (before any load bias).
    pub fn vaddr(&self) -> u64 {
        self.vaddr
    }
    /// Size from the symbol table; 0 when the toolchain did not record one.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The name as stored in the symbol table (mangled for Rust and C++).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Rust names without the hash, C++ names with their parameter list, C names unchanged.
    pub fn demangled(&self) -> &str {
        self.demangled
            .get_or_init(|| super::demangle::demangle(&self.name).map(String::into_boxed_str))
            .as_deref()
            .unwrap_or(&self.name)
    }
    /// STB_LOCAL (`static` in C): invisible to the dynamic linker, present only in `.symtab`.
    pub fn is_local(&self) -> bool {
        self.local
    }
}

/// A PT_LOAD program header: the unit in which the loader maps a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    pub executable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfType {
    /// ET_EXEC: linked at a fixed address (`-no-pie`); vaddr == runtime address.
    Exec,
    /// ET_DYN: PIE executable or shared library; loaded at a random bias.
    Dyn,
    /// ET_REL, ET_CORE or anything else: not something a process runs from.
    Other(u16),
}

/// Function symbols of one ELF file (`.symtab` and `.dynsym` merged) plus what is needed to turn
/// their addresses into file offsets and back.
#[derive(Debug)]
pub struct ElfSymbols {
    path: PathBuf,
    /// Sorted by (vaddr, preference); every (vaddr, name) appears once.
    symbols: Vec<Symbol>,
    /// One entry per distinct start address: (start, end, index of the preferred symbol there).
    /// `end` already accounts for size-0 symbols (they extend to the next start).
    ranges: Vec<(u64, u64, u32)>,
    segments: Vec<LoadSegment>,
    has_symtab: bool,
    elf_type: ElfType,
    is_go: bool,
    heap_bytes: usize,
}

impl ElfSymbols {
    /// Reads the file at `path`. A file with no function symbols loads fine (its segments are
    /// still useful to symbolize to `module+offset`); [`super::resolve`] reports it as stripped.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, SymbolError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let map = Mapping::new(&file).map_err(|e| io_error(path, e))?;
        Self::parse(path, map.bytes())
    }

    /// Parses an ELF image already in memory (the vDSO, or tests). `path` is only used as a label.
    pub fn parse(path: impl Into<PathBuf>, data: &[u8]) -> Result<Self, SymbolError> {
        let path = path.into();
        let not_elf = |reason: String| SymbolError::NotElf { path: path.clone(), reason };
        match object::FileKind::parse(data) {
            Ok(object::FileKind::Elf64) => parse_elf::<elf::FileHeader64<Endianness>>(path.clone(), data)
                .map_err(|e| not_elf(format!("malformed: {e}"))),
            Ok(object::FileKind::Elf32) => parse_elf::<elf::FileHeader32<Endianness>>(path.clone(), data)
                .map_err(|e| not_elf(format!("malformed: {e}"))),
            Ok(kind) => Err(not_elf(format!("it is {kind:?}"))),
            Err(_) if data.starts_with(b"#!") => Err(not_elf("it is a script".into())),
            Err(_) => Err(not_elf("no ELF magic".into())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// All function symbols, sorted by address.
    pub fn symbols(&self) -> &[Symbol] {
        &self.symbols
    }
    pub fn segments(&self) -> &[LoadSegment] {
        &self.segments
    }
    /// False for a stripped file: only `.dynsym` (exported functions) was available.
    pub fn has_symtab(&self) -> bool {
        self.has_symtab
    }
    pub fn elf_type(&self) -> ElfType {
        self.elf_type
    }
    /// Memory held by the symbol tables (raw names included; demangled names come on top as
    /// they are used). Caches budget by this.
    pub fn approx_heap_bytes(&self) -> usize {
        self.heap_bytes
    }
    /// Go binaries move goroutine stacks, which corrupts the return address a uretprobe plants:
    /// callers must refuse uretprobes when this is true.
    pub fn is_go(&self) -> bool {
        self.is_go
    }

    /// Where `vaddr` lives in the file, via the PT_LOAD that maps it. Uprobes attach by offset.
    /// None for addresses in no segment or in the zero-filled (.bss) tail of one.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
            .map(|s| vaddr - s.vaddr + s.offset)
    }

    /// The inverse of [`Self::file_offset`]. File ranges of segments may share a page but not
    /// bytes, so at most one segment matches; executable ones are tried first regardless, since
    /// this is used for code addresses.
    pub fn vaddr_for_offset(&self, offset: u64) -> Option<u64> {
        let hit = |s: &&LoadSegment| offset >= s.offset && offset - s.offset < s.filesz;
        self.segments
            .iter()
            .filter(|s| s.executable)
            .find(hit)
            .or_else(|| self.segments.iter().find(hit))
            .map(|s| offset - s.offset + s.vaddr)
    }

    /// The function containing `vaddr` (an ELF virtual address, not a runtime one).
    pub fn lookup_addr(&self, vaddr: u64) -> Option<&Symbol> {
        let i = self.ranges.partition_point(|r| r.0 <= vaddr).checked_sub(1)?;
        let (_, end, sym) = self.ranges[i];
        if vaddr < end {
            self.symbols.get(sym as usize)
        } else {
            None
        }
    }
}

fn io_error(path: &Path, e: std::io::Error) -> SymbolError {
    match e.kind() {
        std::io::ErrorKind::NotFound => SymbolError::FileNotFound { path: path.to_path_buf() },
        _ => SymbolError::Io { path: path.to_path_buf(), source: e },
    }
}

fn parse_elf<Elf: FileHeader<Endian = Endianness>>(path: PathBuf, data: &[u8]) -> object::read::Result<ElfSymbols> {
    let header = Elf::parse(data)?;
    let endian = header.endian()?;

    let elf_type = match header.e_type(endian) {
        elf::ET_EXEC => ElfType::Exec,
        elf::ET_DYN => ElfType::Dyn,
        other => ElfType::Other(other),
    };

    let segments: Vec<LoadSegment> = header
        .program_headers(endian, data)?
        .iter()
        .filter(|p| p.p_type(endian) == elf::PT_LOAD)
        .map(|p| LoadSegment {
            vaddr: p.p_vaddr(endian).into(),
            memsz: p.p_memsz(endian).into(),
            offset: p.p_offset(endian).into(),
            filesz: p.p_filesz(endian).into(),
            executable: p.p_flags(endian) & elf::PF_X != 0,
        })
        .collect();

    let sections = header.sections(endian, data)?;
    let is_go = [&b".go.buildinfo"[..], b".gopclntab", b".note.go.buildid"]
        .iter()
        .any(|name| sections.section_by_name(endian, name).is_some());

    let mut symbols = Vec::new();
    let mut has_symtab = false;
    for sh_type in [elf::SHT_SYMTAB, elf::SHT_DYNSYM] {
        let table = sections.symbols(endian, data, sh_type)?;
        if sh_type == elf::SHT_SYMTAB && !table.is_empty() {
            has_symtab = true;
        }
        let strings = table.strings();
        for sym in table.iter() {
            let kind = sym.st_type();
            if kind != elf::STT_FUNC && kind != elf::STT_GNU_IFUNC {
                continue;
            }
            if sym.is_undefined(endian) {
                continue;
            }
            let vaddr: u64 = sym.st_value(endian).into();
            let size: u64 = sym.st_size(endian).into();
            if vaddr == 0 && size == 0 {
                continue;
            }
            let Ok(raw) = sym.name(endian, strings) else { continue };
            if raw.is_empty() {
                continue;
            }
            // A name that is not valid UTF-8 is kept lossily rather than dropping the function.
            let name = String::from_utf8_lossy(raw);
            symbols.push(Symbol {
                vaddr,
                size,
                name: name.into_owned().into_boxed_str(),
                demangled: OnceLock::new(),
                local: sym.st_bind() == elf::STB_LOCAL,
            });
        }
    }

    // Preferred symbol first at each address: sized over unsized, global over local, then by name
    // so the order (and so the choice) is deterministic.
    symbols.sort_unstable_by(|a, b| {
        a.vaddr
            .cmp(&b.vaddr)
            .then((a.size == 0).cmp(&(b.size == 0)))
            .then(a.local.cmp(&b.local))
            .then_with(|| a.name.cmp(&b.name))
    });
    symbols.dedup_by(|b, a| a.vaddr == b.vaddr && a.name == b.name);
    symbols.shrink_to_fit();

    let ranges = build_ranges(&symbols, &segments);
    let heap_bytes = symbols.len() * std::mem::size_of::<Symbol>()
        + symbols.iter().map(|s| s.name.len()).sum::<usize>()
        + ranges.len() * std::mem::size_of::<(u64, u64, u32)>();
    Ok(ElfSymbols { path, symbols, ranges, segments, has_symtab, elf_type, is_go, heap_bytes })
}

fn build_ranges(symbols: &[Symbol], segments: &[LoadSegment]) -> Vec<(u64, u64, u32)> {
    let mut ranges: Vec<(u64, u64, u32)> = Vec::new();
    let mut i = 0;
    while i < symbols.len() {
        let start = symbols[i].vaddr;
        let mut end = start;
        let mut j = i;
        while j < symbols.len() && symbols[j].vaddr == start {
            end = end.max(start.saturating_add(symbols[j].size));
            j += 1;
        }
        if end == start {
            // Unsized (hand-written assembly, some linker stubs): extend to the next symbol, or
            // to the end of the segment it sits in.
            end = match symbols.get(j) {
                Some(next) => next.vaddr,
                None => segments
                    .iter()
                    .find(|s| start >= s.vaddr && start - s.vaddr < s.memsz)
                    .map_or(start.saturating_add(1), |s| s.vaddr + s.memsz),
            };
        }
        if let Ok(idx) = u32::try_from(i) {
            ranges.push((start, end, idx));
        }
        i = j;
    }
    ranges
}

/// A read-only private mapping of a whole file: a 2 GB CUDA library costs only the pages holding
/// its headers and symbol tables, not a 2 GB read.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(file: &File) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "file too large to map"))?;
        if len == 0 {
            return Ok(Mapping { ptr: std::ptr::null_mut(), len: 0 });
        }
        // SAFETY: a fresh private read-only mapping of a file we hold open; checked for failure.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr..ptr+len is mapped readable until drop. If another process truncates the
        // file while it is mapped, touching the lost pages raises SIGBUS; libraries in use by a
        // process are replaced by rename, not truncated, so this is the accepted risk (as with
        // every mmap-based ELF reader).
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: unmapping exactly what `new` mapped; no borrow of `bytes()` outlives self.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::symbols::testutil::{Fixture, FixtureKind};

    #[test]
    fn pie_executable_functions_and_offsets_agree_with_readelf() {
        let fx = Fixture::build(FixtureKind::Pie);
        let elf = ElfSymbols::load(&fx.path).unwrap();
        assert_eq!(elf.elf_type(), ElfType::Dyn);
        assert!(elf.has_symtab());
        assert!(!elf.is_go());
        for name in ["llama_decode", "llama_encode", "helper_static", "main"] {
            let sym = elf.symbols().iter().find(|s| s.name() == name).unwrap_or_else(|| panic!("{name} missing"));
            let (vaddr, size) = fx.readelf_symbol(name).unwrap();
            assert_eq!(sym.vaddr(), vaddr, "{name}");
            assert_eq!(sym.size(), size, "{name}");
            assert_eq!(elf.file_offset(vaddr), Some(fx.readelf_file_offset(vaddr)), "{name}");
            assert_eq!(elf.lookup_addr(vaddr).map(Symbol::name), Some(name));
            assert_eq!(elf.lookup_addr(vaddr + size - 1).map(Symbol::name), Some(name));
            let off = elf.file_offset(vaddr).unwrap();
            assert_eq!(elf.vaddr_for_offset(off), Some(vaddr));
        }
    }

    #[test]
    fn non_pie_executable_is_et_exec_with_matching_offsets() {
        let fx = Fixture::build(FixtureKind::NoPie);
        let elf = ElfSymbols::load(&fx.path).unwrap();
        assert_eq!(elf.elf_type(), ElfType::Exec);
        let (vaddr, _) = fx.readelf_symbol("llama_decode").unwrap();
        assert!(vaddr >= 0x400000, "non-PIE links high: {vaddr:#x}");
        let sym = elf.symbols().iter().find(|s| s.name() == "llama_decode").unwrap();
        assert_eq!(sym.vaddr(), vaddr);
        assert_eq!(elf.file_offset(vaddr), Some(fx.readelf_file_offset(vaddr)));
        // On ET_EXEC the offset differs from the address by the base the linker chose.
        assert_ne!(elf.file_offset(vaddr), Some(vaddr));
    }

    #[test]
    fn shared_library_dynsym_matches_nm_dynamic() {
        let fx = Fixture::build(FixtureKind::Shared);
        let elf = ElfSymbols::load(&fx.path).unwrap();
        assert_eq!(elf.elf_type(), ElfType::Dyn);
        let dynamic = fx.nm_dynamic_functions();
        assert!(dynamic.iter().any(|(n, _)| n == "llama_decode"), "{dynamic:?}");
        for (name, vaddr) in &dynamic {
            let sym = elf.symbols().iter().find(|s| s.name() == name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(sym.vaddr(), *vaddr, "{name}");
        }
        // .symtab and .dynsym both list exported functions: each must appear once.
        assert_eq!(elf.symbols().iter().filter(|s| s.name() == "llama_decode").count(), 1);
    }

    #[test]
    fn stripped_shared_library_keeps_exports_only() {
        let fx = Fixture::build(FixtureKind::StrippedShared);
        let elf = ElfSymbols::load(&fx.path).unwrap();
        assert!(!elf.has_symtab());
        assert!(elf.symbols().iter().any(|s| s.name() == "llama_decode"));
        assert!(!elf.symbols().iter().any(|s| s.name() == "helper_static"), "static functions live only in .symtab");
    }

    #[test]
    fn stripped_executable_loads_with_no_symbols() {
        let fx = Fixture::build(FixtureKind::StrippedPie);
        let elf = ElfSymbols::load(&fx.path).unwrap();
        assert!(!elf.has_symtab());
        assert!(elf.symbols().is_empty(), "{:?}", elf.symbols());
        assert!(!elf.segments().is_empty());
    }

    #[test]
    fn not_elf_and_missing_file_errors_say_what_is_wrong() {
        let dir = crate::symbols::testutil::temp_dir("notelf");
        let script = dir.join("run.sh");
        std::fs::write(&script, "#!/bin/sh\nexec true\n").unwrap();
        let err = ElfSymbols::load(&script).unwrap_err();
        assert!(matches!(err, SymbolError::NotElf { .. }), "{err}");
        assert!(err.to_string().contains("script"), "{err}");

        let empty = dir.join("empty");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(ElfSymbols::load(&empty), Err(SymbolError::NotElf { .. })));

        let err = ElfSymbols::load(dir.join("nope")).unwrap_err();
        assert!(matches!(err, SymbolError::FileNotFound { .. }), "{err}");
    }

    #[test]
    fn unsized_symbols_extend_to_the_next_one() {
        let seg = LoadSegment { vaddr: 0x1000, memsz: 0x1000, offset: 0, filesz: 0x1000, executable: true };
        let sym = |vaddr, size, name: &str| Symbol {
            vaddr,
            size,
            name: name.into(),
            demangled: OnceLock::new(),
            local: false,
        };
        let symbols = vec![sym(0x1000, 0, "asm_stub"), sym(0x1100, 0x10, "sized"), sym(0x1200, 0, "tail")];
        let ranges = build_ranges(&symbols, &[seg]);
        let elf = ElfSymbols {
            path: "x".into(),
            symbols,
            ranges,
            segments: vec![seg],
            has_symtab: true,
            elf_type: ElfType::Dyn,
            is_go: false,
            heap_bytes: 0,
        };
        assert_eq!(elf.lookup_addr(0x10ff).map(Symbol::name), Some("asm_stub"));
        assert_eq!(elf.lookup_addr(0x1100).map(Symbol::name), Some("sized"));
        assert!(elf.lookup_addr(0x1110).is_none(), "gap after a sized symbol");
        assert_eq!(elf.lookup_addr(0x1fff).map(Symbol::name), Some("tail"));
        assert!(elf.lookup_addr(0x2000).is_none());
        assert!(elf.lookup_addr(0xfff).is_none());
    }

    #[test]
    fn go_binaries_are_detected_by_section() {
        let fx = Fixture::build(FixtureKind::FakeGo);
        let elf = ElfSymbols::load(&fx.path).unwrap();
        assert!(elf.is_go());
    }
}
