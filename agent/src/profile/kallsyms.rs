//! The kernel's symbol table, for kernel stack frames.

/// Kernel symbols from /proc/kallsyms (addresses need root to be non-zero).
#[derive(Debug, Default)]
pub struct Kallsyms {
    /// All names, one after another.
    names: String,
    /// (address, where its name starts in `names`, its length), by address.
    pub(super) syms: Vec<(u64, u32, u32)>,
}

impl Kallsyms {
    pub fn load() -> Self {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        Self::parse(&text)
    }

    /// `ADDRESS KIND NAME [\t[MODULE]]` lines; text symbols (`t`, `T`, `w`, `W`) at a non-zero address.
    pub fn parse(text: &str) -> Self {
        let mut names = String::with_capacity(text.len() / 2);
        let mut syms = Vec::new();
        for l in text.lines() {
            let mut it = l.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else { continue };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
            if addr != 0 {
                syms.push((addr, names.len() as u32, name.len() as u32));
                names.push_str(name);
            }
        }
        syms.sort_unstable_by_key(|s| s.0);
        Self { names, syms }
    }

    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let i = self.syms.partition_point(|s| s.0 <= addr);
        let &(_, start, len) = self.syms.get(i.checked_sub(1)?)?;
        self.names.get(start as usize..(start + len) as usize)
    }
}
