//! `.eh_frame` (or `.debug_frame`) of one ELF file → its compact unwind table: sorted rows of
//! (pc, CFA rule, rbp rule), one per change of the rules, with a "no CFI" row where a function's
//! FDE ends and no other begins. x86-64 only: the return address is always at CFA − 8.

use agent_common::unwind::{row_kind, UnwindRow};
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};
use object::{Object, ObjectSection, ObjectSegment};

use super::UnwindError;

/// A PT_LOAD segment: file offset → ELF virtual address (for the load bias of a mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub vaddr: u64,
    pub size: u64,
    /// PF_X: the segment executable mappings come from.
    pub exec: bool,
}

/// What a file contributes: its rows and its loadable segments.
#[derive(Debug, Default, Clone)]
pub struct FileTable {
    pub rows: Vec<UnwindRow>,
    pub segments: Vec<Segment>,
    /// FDEs (functions) read.
    pub fdes: usize,
}

impl FileTable {
    /// The ELF virtual address of the start of an executable mapping at file offset `offset`
    /// (page-aligned). Linkers (lld, rustc's default) let segments share a file page at
    /// different virtual pages, so the page can belong to two segments: the executable one,
    /// whose first page this is, is the one mapped executable.
    pub fn vaddr_for_offset(&self, offset: u64) -> Option<u64> {
        vaddr_for_offset(&self.segments, offset)
    }
}

/// [`FileTable::vaddr_for_offset`] over a file's segments.
pub fn vaddr_for_offset(segments: &[Segment], offset: u64) -> Option<u64> {
    let holds = |s: &&Segment| offset >= s.offset & !0xfff && offset < s.offset + s.size.max(1);
    let seg = segments.iter().filter(holds).max_by_key(|s| (s.exec, s.offset))?;
    Some(seg.vaddr.wrapping_sub(seg.offset).wrapping_add(offset))
}

/// Compiles the unwind table of an ELF image.
pub fn compile(data: &[u8]) -> Result<FileTable, UnwindError> {
    let file = object::File::parse(data).map_err(|e| UnwindError::Elf(e.to_string()))?;
    if file.architecture() != object::Architecture::X86_64 {
        return Err(UnwindError::Unsupported(format!("{:?}", file.architecture())));
    }
    let segments = file
        .segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            let exec = matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0);
            Segment { offset, vaddr: s.address(), size, exec }
        })
        .collect();
    let addr = |name: &str| file.section_by_name(name).map(|s| s.address());
    let mut bases = BaseAddresses::default();
    if let Some(a) = addr(".text") {
        bases = bases.set_text(a);
    }
    if let Some(a) = addr(".got") {
        bases = bases.set_got(a);
    }
    let mut raw = Vec::new();
    let eh = file.section_by_name(".eh_frame").and_then(|s| Some((s.address(), s.data().ok()?)));
    let debug = file.section_by_name(".debug_frame").and_then(|s| s.data().ok());
    let fdes = match (eh, debug) {
        (Some((address, bytes)), _) if !bytes.is_empty() => {
            let section = EhFrame::new(bytes, LittleEndian);
            let bases = bases.set_eh_frame(address);
            collect(&section, &bases, &mut raw)?
        }
        (_, Some(bytes)) if !bytes.is_empty() => {
            let mut section = DebugFrame::new(bytes, LittleEndian);
            section.set_address_size(8);
            collect(&section, &bases, &mut raw)?
        }
        _ => return Err(UnwindError::NoCfi),
    };
    Ok(FileTable { rows: finish(raw)?, segments, fdes })
}

/// (pc, priority, row): at the same pc a function's own row (1) wins over the end marker (0) of
/// the function before it.
type RawRow = (u64, u8, UnwindRow);

fn collect<'a, S: UnwindSection<EndianSlice<'a, LittleEndian>>>(
    section: &S,
    bases: &BaseAddresses,
    out: &mut Vec<RawRow>,
) -> Result<usize, UnwindError> {
    let mut ctx = UnwindContext::new();
    let mut entries = section.entries(bases);
    let mut fdes = 0;
    while let Some(entry) = entries.next().map_err(cfi_error)? {
        let CieOrFde::Fde(partial) = entry else { continue };
        // One bad FDE (an unknown augmentation, a broken CIE) costs that function, not the file.
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else { continue };
        let Ok(mut table) = fde.rows(section, bases, &mut ctx) else { continue };
        fdes += 1;
        while let Ok(Some(row)) = table.next_row() {
            out.push((row.start_address(), 1, convert(section, row)));
        }
        let end = fde.initial_address().wrapping_add(fde.len());
        out.push((end, 0, UnwindRow { pc: 0, cfa_offset: 0, rbp_offset: 0, kind: row_kind::NONE }));
    }
    Ok(fdes)
}

fn cfi_error(e: gimli::Error) -> UnwindError {
    UnwindError::Cfi(e.to_string())
}

/// One gimli row → our row kind and offsets (`pc` is filled in later).
fn convert<'a, S: UnwindSection<EndianSlice<'a, LittleEndian>>>(
    section: &S,
    row: &gimli::UnwindTableRow<usize>,
) -> UnwindRow {
    let none = UnwindRow { pc: 0, cfa_offset: 0, rbp_offset: 0, kind: row_kind::NONE };
    match row.register(X86_64::RA) {
        RegisterRule::Undefined => return UnwindRow { kind: row_kind::END, ..none },
        RegisterRule::Offset(-8) => {}
        _ => return none,
    }
    let (kind, offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RSP => (row_kind::CFA_RSP, *offset),
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RBP => (row_kind::CFA_RBP, *offset),
        CfaRule::Expression(expr) => match expr.get(section) {
            Ok(e) if is_plt_expression(e.0.slice()) => (row_kind::PLT, 8),
            Ok(e) => match deref_rbp_offset(e.0.slice()) {
                // The caller's rbp must be the one saved at *(rbp), as gcc's DRAP prologue has it.
                Some(off) if rbp_saved_at_rbp(section, row) => {
                    return UnwindRow { pc: 0, cfa_offset: off as u16, rbp_offset: 0, kind: row_kind::CFA_DEREF_RBP };
                }
                _ => return none,
            },
            _ => return none,
        },
        _ => return none,
    };
    let Ok(cfa_offset) = u16::try_from(offset) else { return none };
    let rbp_offset = match row.register(X86_64::RBP) {
        RegisterRule::Offset(n) if n % 8 == 0 && (-1024..0).contains(&n) => (n / 8) as i8,
        _ => 0,
    };
    UnwindRow { pc: 0, cfa_offset, rbp_offset, kind }
}

/// The CFA expression binutils and lld give PLT entries: `rsp + 8 + ((rip & 15) >= 11) << 3`
/// (DW_OP_breg7 8, DW_OP_breg16 0, DW_OP_lit15, DW_OP_and, DW_OP_lit11, DW_OP_ge, DW_OP_lit3,
/// DW_OP_shl, DW_OP_plus).
fn is_plt_expression(bytes: &[u8]) -> bool {
    bytes.len() == 11 && bytes[0] == 0x77 && bytes[1] == 8 && bytes[2] == 0x80 && bytes[7] == 0x2a
}

/// `DW_OP_breg6 (rbp) N; DW_OP_deref`: the CFA gcc gives a function that realigned its stack
/// through a DRAP register, once the prologue has saved that register below rbp. Returns N.
fn deref_rbp_offset(bytes: &[u8]) -> Option<i16> {
    let [0x76, rest @ .., 0x06] = bytes else { return None };
    let mut r = gimli::EndianSlice::new(rest, LittleEndian);
    let n = gimli::Reader::read_sleb128(&mut r).ok()?;
    if !r.is_empty() {
        return None;
    }
    i16::try_from(n).ok()
}

/// Whether the row's rule for rbp is `DW_CFA_expression rbp: DW_OP_breg6 (rbp) 0` (saved at
/// the address rbp holds).
fn rbp_saved_at_rbp<'a, S: UnwindSection<EndianSlice<'a, LittleEndian>>>(
    section: &S,
    row: &gimli::UnwindTableRow<usize>,
) -> bool {
    match row.register(X86_64::RBP) {
        RegisterRule::Expression(e) => e.get(section).is_ok_and(|e| e.0.slice() == [0x76, 0x00]),
        _ => false,
    }
}

/// Sorted, deduplicated rows with 32-bit pcs.
fn finish(mut raw: Vec<RawRow>) -> Result<Vec<UnwindRow>, UnwindError> {
    raw.sort_by_key(|&(pc, prio, _)| (pc, prio));
    let mut rows: Vec<UnwindRow> = Vec::with_capacity(raw.len() / 2);
    for (pc, _, mut row) in raw {
        row.pc = u32::try_from(pc).map_err(|_| UnwindError::TooLarge(pc))?;
        match rows.last_mut() {
            // Same pc: the later (higher priority) row is the one in force.
            Some(last) if last.pc == row.pc => *last = row,
            // Same rules as the row before: nothing changes at this pc.
            Some(last)
                if (last.kind, last.cfa_offset, last.rbp_offset) == (row.kind, row.cfa_offset, row.rbp_offset) => {}
            None if row.kind == row_kind::NONE => {}
            _ => rows.push(row),
        }
    }
    // Merging same-pc rows may have left equal neighbours.
    rows.dedup_by(|b, a| (a.kind, a.cfa_offset, a.rbp_offset) == (b.kind, b.cfa_offset, b.rbp_offset));
    Ok(rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(pc: u32, kind: u8, cfa_offset: u16) -> UnwindRow {
        UnwindRow { pc, cfa_offset, rbp_offset: 0, kind }
    }

    #[test]
    fn rows_are_sorted_merged_and_end_markers_yield_to_functions() {
        let none = row(0, row_kind::NONE, 0);
        let raw = vec![
            (0x1010, 1, row(0, row_kind::CFA_RSP, 8)),
            (0x1014, 1, row(0, row_kind::CFA_RSP, 16)),
            (0x1020, 0, none),
            (0x1000, 1, row(0, row_kind::CFA_RSP, 8)),
            (0x1010, 0, none),
            (0x1030, 0, none),
            (0x1020, 1, row(0, row_kind::CFA_RSP, 16)),
        ];
        let rows = finish(raw).unwrap();
        assert_eq!(
            rows,
            vec![row(0x1000, row_kind::CFA_RSP, 8), row(0x1014, row_kind::CFA_RSP, 16), row(0x1030, row_kind::NONE, 0)]
        );
    }

    #[test]
    fn drap_cfa_expressions_are_recognised() {
        assert_eq!(deref_rbp_offset(&[0x76, 0x78, 0x06]), Some(-8));
        assert_eq!(deref_rbp_offset(&[0x76, 0x70, 0x06]), Some(-16));
        assert_eq!(deref_rbp_offset(&[0x77, 0x78, 0x06]), None, "rsp-based");
        assert_eq!(deref_rbp_offset(&[0x76, 0x78]), None, "no deref");
        assert_eq!(deref_rbp_offset(&[0x76, 0x78, 0x23, 0x08, 0x06]), None, "more operations");
    }

    #[test]
    fn own_binary_has_a_table_covering_its_code() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let t = compile(&exe).unwrap();
        assert!(t.fdes > 100 && t.rows.len() > 100, "{} FDEs, {} rows", t.fdes, t.rows.len());
        assert!(t.rows.windows(2).all(|w| w[0].pc < w[1].pc));
        assert!(t.rows.iter().any(|r| r.kind == row_kind::CFA_RSP && r.cfa_offset > 8));
        let text = t.segments.iter().find(|s| s.exec).unwrap();
        assert_eq!(t.vaddr_for_offset(text.offset & !0xfff), Some(text.vaddr - (text.offset & 0xfff)));
    }

    #[test]
    fn an_executable_mapping_is_placed_by_its_executable_segment() {
        // rustc/lld layout: the text segment starts inside the last file page of the read-only
        // one, at a different virtual page.
        let seg = |offset, vaddr, size, exec| Segment { offset, vaddr, size, exec };
        let t = FileTable {
            segments: vec![seg(0, 0, 0x19134, false), seg(0x19140, 0x1a140, 0x43bb0, true)],
            ..Default::default()
        };
        assert_eq!(t.vaddr_for_offset(0x19000), Some(0x1a000));
        assert_eq!(t.vaddr_for_offset(0x20000), Some(0x21000));
        // gcc/ld layout: page-aligned segments, one per page.
        let t = FileTable {
            segments: vec![seg(0, 0, 0x1000, false), seg(0x1000, 0x1000, 0x500, true)],
            ..Default::default()
        };
        assert_eq!(t.vaddr_for_offset(0x1000), Some(0x1000));
    }

    #[test]
    fn libc_start_is_the_outermost_frame() {
        // glibc's _start marks the return address undefined: an END row.
        let Some(exe) = ["/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"]
            .iter()
            .find_map(|p| std::fs::read(p).ok())
        else {
            return;
        };
        let t = compile(&exe).unwrap();
        assert!(t.rows.iter().any(|r| r.kind == row_kind::END), "clone3/start_thread end the chain");
        assert!(t.rows.iter().any(|r| r.kind == row_kind::CFA_RBP));
    }
}
