//! CPU profiles: in-kernel sample counts → symbolized, folded stacks per request phase →
//! flamegraph SVGs (inferno) and folded files, plus a "top functions" table.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use agent_common::{phase, SampleKey};

use crate::symbols::Symbolizer;

/// What the kernel counted: per key, and the stacks the keys refer to (leaf first).
#[derive(Debug, Default, Clone)]
pub struct RawProfile {
    pub samples: Vec<(SampleKey, u64)>,
    pub stacks: HashMap<i32, Vec<u64>>,
}

/// Kernel symbols from /proc/kallsyms (addresses need root to be non-zero).
#[derive(Debug, Default)]
pub struct Kallsyms {
    syms: Vec<(u64, String)>,
}

impl Kallsyms {
    pub fn load() -> Self {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Self {
        let mut syms: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                (addr != 0 && matches!(kind, "t" | "T" | "w" | "W")).then(|| (addr, name.to_string()))
            })
            .collect();
        syms.sort_unstable_by_key(|s| s.0);
        Self { syms }
    }

    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let i = self.syms.partition_point(|s| s.0 <= addr);
        (i > 0).then(|| self.syms[i - 1].1.as_str())
    }
}

/// Folded stacks per phase ("all" holds everything).
#[derive(Debug, Default, Clone)]
pub struct Folded {
    pub by_phase: BTreeMap<String, BTreeMap<String, u64>>,
    pub samples: u64,
    /// Samples whose user stack could not be read at all.
    pub no_user_stack: u64,
    /// Samples whose user stack stops before a thread entry point (no frame pointers).
    pub truncated: u64,
    /// What the counts are: `None` = CPU samples; `Some("us")` = off-CPU microseconds.
    pub unit: Option<&'static str>,
}

impl Folded {
    pub fn unit_name(&self) -> &'static str {
        self.unit.unwrap_or("samples")
    }
}

/// Off-CPU counts arrive as nanoseconds; flamegraphs of them are in microseconds.
pub fn ns_to_us(mut raw: RawProfile) -> RawProfile {
    for (_, v) in &mut raw.samples {
        *v /= 1000;
    }
    raw.samples.retain(|(_, v)| *v > 0);
    raw
}

/// Outermost frames of a complete user stack on Linux (glibc/musl, Rust std, Go not included).
const THREAD_ROOTS: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "thread_start",
];

/// User stacks already symbolized, by stack id. Filled while the process lives: after it exits
/// its maps and files under /proc/PID are gone.
pub type UserFrames = HashMap<i32, Vec<String>>;

/// Symbolizes (root first) every user stack in `raw` not in `cache` yet.
pub fn symbolize_new(raw: &RawProfile, symbolizer: &mut Symbolizer, cache: &mut UserFrames) {
    for (key, _) in &raw.samples {
        if key.user_stack < 0 || cache.contains_key(&key.user_stack) {
            continue;
        }
        let Some(ips) = raw.stacks.get(&key.user_stack) else { continue };
        let names = ips
            .iter()
            .rev()
            .map(|&ip| {
                let f = symbolizer.symbolize(key.tgid, ip);
                match (f.function, f.module) {
                    (Some(func), _) => func,
                    (None, Some(m)) => {
                        format!(
                            "[unknown {}]",
                            Path::new(&m).file_name().map_or(m.clone(), |f| f.to_string_lossy().into_owned())
                        )
                    }
                    (None, None) => "[unknown]".to_string(),
                }
            })
            .collect();
        cache.insert(key.user_stack, names);
    }
}

pub fn fold(
    raw: &RawProfile,
    symbolizer: &mut Symbolizer,
    cache: &mut UserFrames,
    kallsyms: &Kallsyms,
    comm: &str,
) -> Folded {
    symbolize_new(raw, symbolizer, cache);
    let mut out = Folded::default();
    for (key, n) in &raw.samples {
        let n = *n;
        out.samples += n;
        let mut frames: Vec<String> = vec![comm.to_string()];
        match cache.get(&key.user_stack) {
            Some(names) if key.user_stack >= 0 => {
                // libc's own entry (__libc_start_call_main) is a local symbol: an unnamed libc root counts as complete.
                if !names
                    .first()
                    .is_some_and(|root| THREAD_ROOTS.iter().any(|r| root == r) || root.starts_with("[unknown libc.so"))
                {
                    out.truncated += n;
                }
                frames.extend(names.iter().cloned());
            }
            _ => {
                out.no_user_stack += n;
                frames.push("[no user stack]".to_string());
            }
        }
        if let Some(ips) = raw.stacks.get(&key.kernel_stack).filter(|_| key.kernel_stack >= 0) {
            frames.extend(ips.iter().rev().map(|&ip| format!("{}_[k]", kallsyms.lookup(ip).unwrap_or("[unknown]"))));
        }
        // `;` separates frames in the folded format; names must not contain it.
        let line = frames.iter().map(|f| f.replace(';', ":")).collect::<Vec<_>>().join(";");
        let phase_name = phase::NAMES.get(key.phase as usize).copied().unwrap_or("other");
        *out.by_phase.entry("all".into()).or_default().entry(line.clone()).or_default() += n;
        *out.by_phase.entry(phase_name.into()).or_default().entry(line).or_default() += n;
    }
    out
}

/// `FILE.svg` + phase → `FILE.prefill.svg`; "all" keeps the name as given.
pub fn phase_path(path: &Path, phase: &str) -> PathBuf {
    if phase == "all" {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{phase}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{phase}"),
    };
    path.with_file_name(name)
}

pub fn folded_lines(stacks: &BTreeMap<String, u64>) -> Vec<String> {
    stacks.iter().map(|(s, n)| format!("{s} {n}")).collect()
}

/// Writes one SVG (and folded file) per phase that has samples; returns the files written.
pub fn write(
    folded: &Folded,
    svg: Option<&Path>,
    folded_path: Option<&Path>,
    title: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (phase_name, stacks) in &folded.by_phase {
        let lines = folded_lines(stacks);
        let count: u64 = stacks.values().sum();
        if let Some(p) = folded_path {
            let p = phase_path(p, phase_name);
            std::fs::write(&p, lines.join("\n") + "\n")?;
            written.push(p);
        }
        if let Some(p) = svg {
            let p = phase_path(p, phase_name);
            let mut opts = inferno::flamegraph::Options::default();
            opts.title = format!("{title} — {phase_name}, {count} {}", folded.unit_name());
            opts.count_name = folded.unit_name().to_string();
            let mut f = std::io::BufWriter::new(std::fs::File::create(&p)?);
            inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut f)?;
            written.push(p);
        }
    }
    Ok(written)
}

/// (function, self share, total share) of the "all" profile, by self share.
pub fn top_functions(folded: &Folded, n: usize) -> Vec<(String, f64, f64)> {
    let Some(all) = folded.by_phase.get("all") else { return Vec::new() };
    let total: u64 = all.values().sum();
    if total == 0 {
        return Vec::new();
    }
    let mut self_n: HashMap<&str, u64> = HashMap::new();
    let mut total_n: HashMap<&str, u64> = HashMap::new();
    for (stack, &c) in all {
        let frames: Vec<&str> = stack.split(';').skip(1).collect();
        if let Some(leaf) = frames.last() {
            *self_n.entry(leaf).or_default() += c;
        }
        let mut seen = std::collections::HashSet::new();
        for f in frames {
            if seen.insert(f) {
                *total_n.entry(f).or_default() += c;
            }
        }
    }
    let mut v: Vec<(String, f64, f64)> = total_n
        .iter()
        .map(|(f, &t)| (f.to_string(), *self_n.get(f).unwrap_or(&0) as f64 / total as f64, t as f64 / total as f64))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.total_cmp(&a.2)));
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_lookup_and_phase_paths() {
        let k = Kallsyms::parse("ffffffff81000000 T _stext\nffffffff81000100 t do_thing\n0000000000000000 T hidden\n");
        assert_eq!(k.lookup(0xffffffff81000150), Some("do_thing"));
        assert_eq!(k.lookup(0x10), None);
        assert_eq!(phase_path(Path::new("/o/cpu.svg"), "prefill"), PathBuf::from("/o/cpu.prefill.svg"));
        assert_eq!(phase_path(Path::new("/o/cpu.svg"), "all"), PathBuf::from("/o/cpu.svg"));
        assert_eq!(phase_path(Path::new("/o/stacks"), "decode"), PathBuf::from("/o/stacks.decode"));
    }

    #[test]
    fn top_functions_self_and_total() {
        let mut f = Folded::default();
        let all = f.by_phase.entry("all".into()).or_default();
        all.insert("srv;main;a".into(), 70);
        all.insert("srv;main;b".into(), 30);
        let top = top_functions(&f, 3);
        assert_eq!(top[0].0, "a");
        assert!((top[0].1 - 0.7).abs() < 1e-9);
        let main = top.iter().find(|t| t.0 == "main").unwrap();
        assert!((main.2 - 1.0).abs() < 1e-9 && main.1 == 0.0);
    }
}
