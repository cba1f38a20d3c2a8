//! Struct layouts from the running kernel's BTF (`/sys/kernel/btf/vmlinux`): the socket capture
//! reads a few fields of `struct sock` and `struct pt_regs`, and their offsets differ between
//! kernel versions and configurations. aya's BTF type keeps its lookups private, and the format
//! is small, so this reads just what we need: named structs and their members, anonymous
//! unions/structs included, with bitfields refused.

use std::path::Path;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("not BTF data ({0})")]
    Format(&'static str),
    #[error("no struct `{0}` in the kernel's BTF")]
    NoStruct(String),
    #[error("no member `{member}` in struct `{within}` in the kernel's BTF")]
    NoMember { within: String, member: String },
    #[error("`{0}` is a bitfield: no byte offset")]
    Bitfield(String),
}

const MAGIC: u16 = 0xeB9F;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One member found by [`Btf::member`]: byte offset from the start of the outer struct, size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

/// Parsed BTF: the raw type section, an index of where each type id starts, the strings.
pub struct Btf {
    data: Vec<u8>,
    types_end: usize,
    strings_at: usize,
    strings_end: usize,
    /// `index[id - 1]` = byte offset of type `id` in `data`.
    index: Vec<u32>,
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path)
            .map_err(|e| BtfError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Self::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| data.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if u16_at(0) != Some(MAGIC) {
            return Err(BtfError::Format("bad magic (or not little-endian)"));
        }
        let field = |o| u32_at(o).map(|v| v as usize).ok_or(BtfError::Format("short header"));
        let hdr_len = field(4)?;
        let (type_off, type_len, str_off, str_len) = (field(8)?, field(12)?, field(16)?, field(20)?);
        let types_at = hdr_len + type_off;
        let strings_at = hdr_len + str_off;
        let (types_end, strings_end) = (types_at + type_len, strings_at + str_len);
        if types_end > data.len() || strings_end > data.len() {
            return Err(BtfError::Format("sections past the end"));
        }
        let mut btf = Btf { data, types_end, strings_at, strings_end, index: Vec::new() };
        let mut at = types_at;
        while at < types_end {
            btf.index.push(at as u32);
            at += btf.record_len(at).ok_or(BtfError::Format("truncated type record"))?;
        }
        Ok(btf)
    }

    fn u32_at(&self, o: usize) -> Option<u32> {
        self.data.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Bytes of the type record at `at` (12-byte common part plus the kind's trailer).
    fn record_len(&self, at: usize) -> Option<usize> {
        let info = self.u32_at(at + 4)?;
        let vlen = (info & 0xffff) as usize;
        let extra = match (info >> 24) & 0x1f {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
            KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
            _ => 0,
        };
        let len = 12 + extra;
        (at + len <= self.types_end).then_some(len)
    }

    fn name(&self, off: u32) -> &[u8] {
        let start = self.strings_at + off as usize;
        if start >= self.strings_end {
            return b"";
        }
        let s = &self.data[start..self.strings_end];
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    /// (kind, kind_flag, vlen, name_off, size_or_type, record offset) of type `id`.
    fn ty(&self, id: u32) -> Option<(u32, bool, usize, u32, u32, usize)> {
        let at = *self.index.get((id as usize).checked_sub(1)?)? as usize;
        let info = self.u32_at(at + 4)?;
        Some((
            (info >> 24) & 0x1f,
            info >> 31 == 1,
            (info & 0xffff) as usize,
            self.u32_at(at)?,
            self.u32_at(at + 8)?,
            at,
        ))
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Some((KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG, _, _, _, next, _)) => {
                    id = next
                }
                _ => break,
            }
        }
        id
    }

    fn size_of(&self, id: u32) -> u32 {
        match self.ty(self.resolve(id)) {
            Some((KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64, _, _, _, size, _)) => size,
            Some((KIND_PTR, ..)) => 8,
            Some((KIND_ARRAY, _, _, _, _, at)) => {
                let (elem, n) = (self.u32_at(at + 12).unwrap_or(0), self.u32_at(at + 20).unwrap_or(0));
                self.size_of(elem).saturating_mul(n)
            }
            _ => 0,
        }
    }

    fn struct_id(&self, name: &str) -> Option<u32> {
        (1..=self.index.len() as u32).find(|&id| {
            matches!(self.ty(id), Some((KIND_STRUCT, _, _, name_off, _, _)) if self.name(name_off) == name.as_bytes())
        })
    }

    /// Finds `member` in the struct/union `id`, looking into anonymous members too; returns its
    /// byte offset within `id` and its type.
    fn find(&self, id: u32, member: &str, depth: u32) -> Result<Option<(u32, u32)>, BtfError> {
        let Some((kind @ (KIND_STRUCT | KIND_UNION), kind_flag, vlen, _, _, at)) = self.ty(self.resolve(id)) else {
            return Ok(None);
        };
        let _ = kind;
        for i in 0..vlen {
            let m = at + 12 + i * 12;
            let (name_off, ty, raw) =
                (self.u32_at(m).unwrap_or(0), self.u32_at(m + 4).unwrap_or(0), self.u32_at(m + 8).unwrap_or(0));
            let (bits, bitfield) = if kind_flag { (raw & 0xff_ffff, raw >> 24) } else { (raw, 0) };
            let name = self.name(name_off);
            if name == member.as_bytes() {
                if bitfield != 0 || bits % 8 != 0 {
                    return Err(BtfError::Bitfield(member.to_string()));
                }
                return Ok(Some((bits / 8, ty)));
            }
            if name.is_empty() && depth < 8 {
                if let Some((inner, t)) = self.find(ty, member, depth + 1)? {
                    return Ok(Some((bits / 8 + inner, t)));
                }
            }
        }
        Ok(None)
    }

    /// Byte offset and size of `path` (e.g. `["__sk_common", "skc_num"]`) inside struct `name`.
    pub fn member(&self, name: &str, path: &[&str]) -> Result<Member, BtfError> {
        let mut id = self.struct_id(name).ok_or_else(|| BtfError::NoStruct(name.to_string()))?;
        let mut offset = 0;
        let mut within = name.to_string();
        for part in path {
            let (off, ty) = self
                .find(id, part, 0)?
                .ok_or_else(|| BtfError::NoMember { within: within.clone(), member: part.to_string() })?;
            offset += off;
            id = ty;
            within = part.to_string();
        }
        Ok(Member { offset, size: self.size_of(id) })
    }

    /// Whether a type of this name and kind exists, e.g. the `btf_trace_sock_send_length`
    /// typedef that every tracepoint of the running kernel has.
    pub fn has_typedef(&self, name: &str) -> bool {
        (1..=self.index.len() as u32).any(|id| {
            matches!(self.ty(id), Some((KIND_TYPEDEF, _, _, name_off, _, _)) if self.name(name_off) == name.as_bytes())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `struct inner { u16 a; u16 b; }`,
    /// `struct outer { u32 x; union { u64 y; struct inner in; }; u16 z; u8 bits:3; }`.
    fn sample() -> Vec<u8> {
        let mut strings = b"\0".to_vec();
        let mut s = |name: &str| {
            let off = strings.len() as u32;
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            off
        };
        let names: Vec<u32> = ["u16", "u32", "u64", "inner", "a", "b", "outer", "x", "y", "in", "z", "bits", "u8"]
            .iter()
            .map(|n| s(n))
            .collect();
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_le_bytes()));
        let info = |kind: u32, vlen: u32, flag: bool| (kind << 24) | vlen | (u32::from(flag) << 31);
        push(&[names[0], info(KIND_INT, 0, false), 2, 16]); // 1 u16
        push(&[names[1], info(KIND_INT, 0, false), 4, 32]); // 2 u32
        push(&[names[2], info(KIND_INT, 0, false), 8, 64]); // 3 u64
        push(&[names[3], info(KIND_STRUCT, 2, false), 4, names[4], 1, 0, names[5], 1, 16]); // 4 inner
        push(&[0, info(KIND_UNION, 2, false), 8, names[8], 3, 0, names[9], 4, 0]); // 5 anon union
        push(&[names[12], info(KIND_INT, 0, false), 1, 8]); // 6 u8
        push(&[
            names[6],
            info(KIND_STRUCT, 4, true),
            24,
            names[7],
            2,
            0,
            0,
            5,
            64,
            names[10],
            1,
            128,
            names[11],
            6,
            (3 << 24) | 144,
        ]); // 7 outer
        push(&[0, info(KIND_TYPEDEF, 0, false), 7]); // 8 typedef (unnamed: not found)
        let mut out = Vec::new();
        let hdr = [0u32, 24, 0, types.len() as u32, types.len() as u32, strings.len() as u32];
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in &hdr[1..] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn members_direct_nested_and_anonymous() {
        let btf = Btf::parse(sample()).unwrap();
        assert_eq!(btf.member("outer", &["x"]), Ok(Member { offset: 0, size: 4 }));
        assert_eq!(btf.member("outer", &["y"]), Ok(Member { offset: 8, size: 8 }));
        assert_eq!(btf.member("outer", &["in", "b"]), Ok(Member { offset: 10, size: 2 }));
        assert_eq!(btf.member("outer", &["z"]), Ok(Member { offset: 16, size: 2 }));
        assert_eq!(btf.member("outer", &["bits"]), Err(BtfError::Bitfield("bits".into())));
        assert!(matches!(btf.member("outer", &["nope"]), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.member("nothere", &["x"]), Err(BtfError::NoStruct(_))));
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        assert!(Btf::parse(b"garbage".to_vec()).is_err());
        let good = sample();
        for cut in 0..good.len() {
            let _ = Btf::parse(good[..cut].to_vec()).map(|b| b.member("outer", &["in", "b"]));
        }
    }

    #[test]
    fn running_kernel_has_the_fields_socket_capture_reads() {
        let Ok(btf) = Btf::from_sys_fs() else { return }; // no BTF here: the fallback path's case
        let num = btf.member("sock", &["__sk_common", "skc_num"]).unwrap();
        assert_eq!(num.size, 2);
        assert_eq!(btf.member("sock", &["sk_protocol"]).unwrap().size, 2);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(btf.member("pt_regs", &["orig_ax"]).unwrap(), Member { offset: 120, size: 8 });
    }
}
