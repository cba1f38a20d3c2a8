//! JIT perf maps (`/tmp/perf-PID.map`): the names JITs (Node `--perf-basic-prof`, CPython
//! `-X perf`, the JVM with an agent) give to code they put in anonymous memory.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerfMapEntry {
    pub start: u64,
    pub size: u64,
    pub name: Box<str>,
}

impl PerfMapEntry {
    fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr - self.start < self.size
    }
}

#[derive(Debug, Clone, Default)]
pub struct PerfMap {
    /// Sorted by start; for equal starts only the last line written survives.
    entries: Vec<PerfMapEntry>,
}

/// How far back `lookup` looks for an entry enclosing a shorter one that starts later. JIT
/// entries do not nest in practice; this only covers code regions reused with other sizes.
const LOOKBACK: usize = 8;

impl PerfMap {
    /// Lines are `START SIZE NAME` with hex numbers (with or without `0x`); the name may hold
    /// spaces. Malformed lines (a JIT still writing the last one) are skipped.
    pub fn parse(text: &str) -> Self {
        let mut entries: Vec<(usize, PerfMapEntry)> = text.lines().filter_map(parse_line).enumerate().collect();
        // JITs reuse freed code memory: the later line describes what is there now.
        entries.sort_by(|a, b| a.1.start.cmp(&b.1.start).then(b.0.cmp(&a.0)));
        entries.dedup_by(|later, kept| later.1.start == kept.1.start);
        PerfMap { entries: entries.into_iter().map(|(_, e)| e).collect() }
    }

    pub fn load(path: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        Ok(Self::parse(&String::from_utf8_lossy(&bytes)))
    }

    pub fn lookup(&self, addr: u64) -> Option<&PerfMapEntry> {
        let upto = self.entries.partition_point(|e| e.start <= addr);
        self.entries[..upto].iter().rev().take(LOOKBACK).find(|e| e.contains(addr))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_line(line: &str) -> Option<PerfMapEntry> {
    let line = line.trim();
    let (start, rest) = line.split_once(char::is_whitespace)?;
    let (size, name) = rest.trim_start().split_once(char::is_whitespace)?;
    let name = name.trim();
    let size = parse_hex(size)?;
    if name.is_empty() || size == 0 {
        return None;
    }
    Some(PerfMapEntry { start: parse_hex(start)?, size, name: name.into() })
}

fn parse_hex(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_hex_styles_and_names_with_spaces() {
        let map = PerfMap::parse(
            "7f0000001000 40 LazyCompile:~handler /srv/app.js:10\n\
             0x7f0000002000 0x20 py::model.forward:/srv/model.py\n\
             not a line\n\
             7f0000003000 zz bad size\n\
             7f0000004000 10\n\
             7f0000005000 0 empty\n",
        );
        assert_eq!(map.len(), 2);
        let e = map.lookup(0x7f000000103f).unwrap();
        assert_eq!(&*e.name, "LazyCompile:~handler /srv/app.js:10");
        assert!(map.lookup(0x7f0000001040).is_none());
        assert_eq!(&*map.lookup(0x7f0000002000).unwrap().name, "py::model.forward:/srv/model.py");
        assert!(map.lookup(0x7f0000000fff).is_none());
        assert!(map.lookup(0x7f0000004005).is_none());
        assert!(PerfMap::parse("").lookup(0).is_none());
    }

    #[test]
    fn later_lines_win_for_reused_code_memory() {
        let map = PerfMap::parse("1000 100 old\n1000 80 new\n1200 10 other\n1010 8 inner\n");
        assert_eq!(&*map.lookup(0x1004).unwrap().name, "new");
        assert_eq!(&*map.lookup(0x1012).unwrap().name, "inner");
        assert_eq!(&*map.lookup(0x1050).unwrap().name, "new", "enclosing entry found behind a shorter one");
        assert!(map.lookup(0x1090).is_none(), "the old, longer extent is gone");
    }
}
