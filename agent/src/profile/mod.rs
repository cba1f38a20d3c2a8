//! CPU profiles: in-kernel sample counts → symbolized, folded stacks per request phase →
//! flamegraph SVGs (inferno) and folded files, plus a "top functions" table.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
    /// Line (`frame;frame;…`, root first) → count; the same line text is shared by "all" and its
    /// phase.
    pub by_phase: BTreeMap<String, BTreeMap<Arc<str>, u64>>,
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

/// Phase slots while folding: `phase::NAMES`, then "other" for anything else.
const PHASE_SLOTS: usize = phase::NAMES.len() + 1;

fn slot_name(slot: usize) -> &'static str {
    phase::NAMES.get(slot).copied().unwrap_or("other")
}

/// Appends one frame; `;` separates frames in the folded format, so names must not contain it.
fn push_frame(line: &mut String, name: &str) {
    if name.contains(';') {
        line.extend(name.chars().map(|c| if c == ';' { ':' } else { c }));
    } else {
        line.push_str(name);
    }
}

/// How many bytes of `s` are `b`, eight at a time (about 10 times faster here than a byte loop,
/// which the compiler does not vectorize well).
fn count_byte(s: &[u8], b: u8) -> usize {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const ONES: u64 = 0x0101_0101_0101_0101;
    const PAIRS: u64 = 0x00ff_00ff_00ff_00ff;
    let (words, rest) = s.as_chunks::<8>();
    let pattern = u64::from_ne_bytes([b; 8]);
    let mut total = 0;
    // Per byte lane at most 255 words between sums.
    for block in words.chunks(255) {
        let mut lanes = 0u64;
        for w in block {
            let x = u64::from_ne_bytes(*w) ^ pattern;
            // High bit of each byte set where x's byte is not 0 (exact, no borrow between bytes).
            let nonzero = ((x & LOW7).wrapping_add(LOW7)) | x;
            lanes += (!nonzero >> 7) & ONES;
        }
        let pairs = (lanes & PAIRS) + ((lanes >> 8) & PAIRS);
        total += (pairs.wrapping_mul(0x0001_0001_0001_0001) >> 48) as usize;
    }
    total + rest.iter().filter(|&&x| x == b).count()
}

/// The folded line of one stack: `comm;user frames…;kernel frames…_[k]`, root first.
fn stack_line(
    line: &mut String,
    comm: &str,
    user: Option<&Vec<String>>,
    kernel: Option<&Vec<u64>>,
    kallsyms: &Kallsyms,
) {
    let kernel_names = || kernel.into_iter().flatten().rev().map(|&ip| kallsyms.lookup(ip).unwrap_or("[unknown]"));
    // Names almost never contain `;`: copy them as they are, then count the `;`s once over the
    // whole line, and escape frame by frame only when a name brought one of its own.
    line.clear();
    line.push_str(comm);
    let mut separators = 0;
    match user {
        Some(names) => {
            for name in names {
                line.push(';');
                line.push_str(name);
            }
            separators += names.len();
        }
        None => {
            line.push_str(";[no user stack]");
            separators += 1;
        }
    }
    for name in kernel_names() {
        line.push(';');
        line.push_str(name);
        line.push_str("_[k]");
        separators += 1;
    }
    if count_byte(line.as_bytes(), b';') == separators {
        return;
    }
    line.clear();
    push_frame(line, comm);
    match user {
        Some(names) => {
            for name in names {
                line.push(';');
                push_frame(line, name);
            }
        }
        None => line.push_str(";[no user stack]"),
    }
    for name in kernel_names() {
        line.push(';');
        push_frame(line, name);
        line.push_str("_[k]");
    }
}

/// Folds the samples into one line per distinct stack and counts them per phase. Each distinct
/// (user, kernel) stack pair is turned into text once; "all" and its phase share that text.
pub fn fold(
    raw: &RawProfile,
    symbolizer: &mut Symbolizer,
    cache: &mut UserFrames,
    kallsyms: &Kallsyms,
    comm: &str,
) -> Folded {
    symbolize_new(raw, symbolizer, cache);
    let mut out = Folded::default();
    // Per distinct (user, kernel) stack pair: its line and counts per phase slot (`None`: no
    // sample there; a sample of count 0 still lists the line, as it always has).
    let mut pair_line: HashMap<(i32, i32), usize> = HashMap::new();
    let mut lines: Vec<(Arc<str>, [Option<u64>; PHASE_SLOTS])> = Vec::new();
    let mut line = String::new();
    for (key, n) in &raw.samples {
        let n = *n;
        out.samples += n;
        let user = cache.get(&key.user_stack).filter(|_| key.user_stack >= 0);
        match user {
            Some(names) => {
                // libc's own entry (__libc_start_call_main) is a local symbol: an unnamed libc root counts as complete.
                if !names
                    .first()
                    .is_some_and(|root| THREAD_ROOTS.iter().any(|r| root == r) || root.starts_with("[unknown libc.so"))
                {
                    out.truncated += n;
                }
            }
            None => out.no_user_stack += n,
        }
        let kernel = raw.stacks.get(&key.kernel_stack).filter(|_| key.kernel_stack >= 0);
        let pair = (if user.is_some() { key.user_stack } else { -1 }, if kernel.is_some() { key.kernel_stack } else { -1 });
        let i = *pair_line.entry(pair).or_insert_with(|| {
            stack_line(&mut line, comm, user, kernel, kallsyms);
            lines.push((Arc::from(line.as_str()), [None; PHASE_SLOTS]));
            lines.len() - 1
        });
        let slot = (key.phase as usize).min(PHASE_SLOTS - 1);
        *lines[i].1[slot].get_or_insert(0) += n;
    }
    // Sort once; different stack ids can symbolize to the same line: merge those.
    lines.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    lines.dedup_by(|later, kept| {
        if later.0 != kept.0 {
            return false;
        }
        for (k, l) in kept.1.iter_mut().zip(later.1) {
            if let Some(l) = l {
                *k.get_or_insert(0) += l;
            }
        }
        true
    });
    if !lines.is_empty() {
        let all = lines.iter().map(|(l, c)| (Arc::clone(l), c.iter().flatten().sum()));
        out.by_phase.insert("all".into(), all.collect());
    }
    for slot in 0..PHASE_SLOTS {
        let stacks: BTreeMap<Arc<str>, u64> =
            lines.iter().filter_map(|(l, c)| c[slot].map(|n| (Arc::clone(l), n))).collect();
        if !stacks.is_empty() {
            out.by_phase.insert(slot_name(slot).into(), stacks);
        }
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

pub fn folded_lines(stacks: &BTreeMap<Arc<str>, u64>) -> Vec<String> {
    stacks.iter().map(|(s, n)| format!("{s} {n}")).collect()
}

/// `stack count` lines in one string, and where each line ends.
fn lines_text<'a>(lines: impl ExactSizeIterator<Item = (&'a str, u64)> + Clone) -> (String, Vec<usize>) {
    use std::fmt::Write as _;
    let mut ends = Vec::with_capacity(lines.len());
    let mut text = String::with_capacity(lines.clone().map(|(s, _)| s.len() + 22).sum());
    for (stack, n) in lines {
        text.push_str(stack);
        let _ = write!(text, " {n}");
        ends.push(text.len());
        text.push('\n');
    }
    (text, ends)
}

/// How many leading bytes `a` and `b` have in common.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let words = a.chunks_exact(8).zip(b.chunks_exact(8));
    let mut i = 0;
    for (x, y) in words {
        let x = u64::from_le_bytes(x.try_into().unwrap_or_default());
        let y = u64::from_le_bytes(y.try_into().unwrap_or_default());
        if x != y {
            return i + (x ^ y).trailing_zeros() as usize / 8;
        }
        i += 8;
    }
    i + a[i..].iter().zip(&b[i..]).take_while(|(x, y)| x == y).count()
}

/// Where the frame that starts at byte `start` of `stack` ends (its `;`, or the end).
fn frame_end(stack: &str, start: usize) -> usize {
    stack.as_bytes()[start..].iter().position(|&b| b == b';').map_or(stack.len(), |p| start + p)
}

/// Whether inferno reads `stack count` as exactly that stack and count: no whitespace for its
/// `trim` at either end, not a `# ` comment, no empty first frame, and nothing after the last
/// space that it would take for a second (differential) count column.
fn reads_as_is(stack: &str) -> bool {
    let b = stack.as_bytes();
    let tail = b.iter().rposition(|&c| c == b' ' || c == b';').map_or(0, |p| p + 1);
    let count_like = tail > 0 && b[tail - 1] == b' ' && b[tail..].iter().all(|&c| c.is_ascii_digit() || c == b'.');
    !stack.is_empty()
        && !stack.starts_with(char::is_whitespace)
        && !stack.ends_with(char::is_whitespace)
        && !stack.starts_with("# ")
        && !stack.starts_with(';')
        && !count_like
}

/// One phase's stacks as inferno needs them for the same SVG, with every frame that inferno
/// would leave out of the drawing (narrower than `min_width` percent of all samples) folded
/// into its parent beforehand, so that inferno does not merge 100k lines to draw a few thousand
/// frames. `None` where that cannot be done exactly (then inferno gets every line).
///
/// inferno sorts the lines, then walks them in order: a frame at depth d spans the consecutive
/// lines that share their first d frames, and it is drawn only when its sample count is at
/// least `min_width`% of the total ("frames" are kept in the order they close, shallowest
/// first among those closing together). The stacks are already sorted, so the frames are the
/// LCP intervals of consecutive lines. A pruned frame whose parent is drawn — and everything
/// in it, which is narrower still — becomes one line: its first line cut after the frame's
/// child (the one frame more keeps that line sorted between its neighbours), with the frame's
/// whole count. Every drawn frame keeps its name, depth, start and end and its place in the
/// close order, and `total_samples` stays; so the SVG is byte for byte the one of all lines.
fn pruned_for_svg(stacks: &BTreeMap<Arc<str>, u64>, min_width: f64) -> Option<Vec<(&str, u64)>> {
    struct Open {
        /// The frames shared by the lines of this interval end before byte `v - 1`.
        v: usize,
        first: usize,
        time: u64,
        out: usize,
    }
    let lines: Vec<(&str, u64)> = stacks.iter().map(|(s, &n)| (&**s, n)).collect();
    let total = lines.iter().try_fold(0u64, |t, l| t.checked_add(l.1))?;
    if total == 0 || !lines.iter().all(|l| reads_as_is(l.0)) {
        return None;
    }
    // inferno's own arithmetic, so that the same frames fall under it.
    let widthpertime_pct = 100.0 / total as f64;
    let minwidth_time = min_width / widthpertime_pct;
    let pruned = |w: u64| (w as f64) < minwidth_time;
    // Shared frames of consecutive stacks as `v` (end of the last shared frame + 1; 0: none).
    // `None` where "a count" would not sort before "b count" as a and b do (inferno sorts whole
    // lines).
    let shared = |a: &str, b: &str| -> Option<usize> {
        let l = common_prefix(a.as_bytes(), b.as_bytes());
        if l == a.len() {
            match b.as_bytes().get(l) {
                Some(b';') => return Some(l + 1),
                Some(&c) if c > b' ' => {}
                _ => return None,
            }
        }
        Some(a.as_bytes()[..l].iter().rposition(|&c| c == b';').map_or(0, |p| p + 1))
    };
    // A frame starting at byte `start` of `stack`, pruned: the stack up to that frame's child.
    let cut = |stack: &'_ str, start: usize| -> usize {
        let end = frame_end(stack, start);
        if end == stack.len() { end } else { frame_end(stack, end + 1) }
    };
    let mut out: Vec<(&str, u64)> = Vec::new();
    let mut merged = Vec::new();
    let mut open = vec![Open { v: 0, first: 0, time: 0, out: 0 }];
    let mut time = 0u64;
    let mut prev_shared = 0;
    for (i, &(stack, n)) in lines.iter().enumerate() {
        let next_shared = match lines.get(i + 1) {
            Some(next) => shared(stack, next.0)?,
            None => 0,
        };
        let (line_time, line_out) = (time, out.len());
        time += n;
        // Frames of this line alone: count n.
        let own = prev_shared.max(next_shared);
        if stack.len() + 1 > own && pruned(n) {
            merged.push(out.len());
            out.push((&stack[..cut(stack, own)], n));
        } else {
            out.push((stack, n));
        }
        // Frames that end with this line.
        let mut last = None;
        while let Some(o) = open.pop_if(|o| o.v > next_shared) {
            let parent_v = open.last().map_or(0, |p| p.v).max(next_shared);
            let w = time - o.time;
            if pruned(w) {
                out.truncate(o.out);
                while merged.last().is_some_and(|&m| m >= o.out) {
                    merged.pop();
                }
                merged.push(out.len());
                let first = lines[o.first].0;
                out.push((&first[..cut(first, parent_v)], w));
            }
            last = Some((o.first, o.time, o.out));
        }
        if open.last().is_none_or(|o| o.v < next_shared) {
            let (first, time, out) = last.unwrap_or((i, line_time, line_out));
            open.push(Open { v: next_shared, first, time, out });
        }
        prev_shared = next_shared;
    }
    // The cut lines must read as they are and stay in order (checked, not only argued).
    for &m in &merged {
        let line = |k: usize| out.get(k).map(|(s, n)| format!("{s} {n}"));
        let this = line(m);
        if !reads_as_is(out[m].0) || (m > 0 && line(m - 1) >= this) || line(m + 1).is_some_and(|next| Some(next) <= this) {
            return None;
        }
    }
    Some(out)
}

/// One phase's folded file and SVG; returns the files written, in that order.
fn write_phase(
    folded: &Folded,
    phase_name: &str,
    stacks: &BTreeMap<Arc<str>, u64>,
    svg: Option<&Path>,
    folded_path: Option<&Path>,
    title: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    if let Some(p) = folded_path {
        let p = phase_path(p, phase_name);
        // Streamed: the lines are already in order, no need to hold the file in memory.
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&p)?);
        for (stack, n) in stacks {
            f.write_all(stack.as_bytes())?;
            writeln!(f, " {n}")?;
        }
        f.flush()?;
        written.push(p);
    }
    if let Some(p) = svg {
        let p = phase_path(p, phase_name);
        let count: u64 = stacks.values().sum();
        let mut opts = inferno::flamegraph::Options::default();
        opts.title = format!("{title} — {phase_name}, {count} {}", folded.unit_name());
        opts.count_name = folded.unit_name().to_string();
        let (text, ends) = match pruned_for_svg(stacks, opts.min_width) {
            Some(lines) => lines_text(lines.iter().copied()),
            None => lines_text(stacks.iter().map(|(s, &n)| (&**s, n))),
        };
        let mut f = std::io::BufWriter::new(std::fs::File::create(&p)?);
        let lines = ends.iter().scan(0, |start, &end| {
            let line = &text[*start..end];
            *start = end + 1;
            Some(line)
        });
        inferno::flamegraph::from_lines(&mut opts, lines, &mut f)?;
        f.flush()?;
        written.push(p);
    }
    Ok(written)
}

/// Writes one SVG (and folded file) per phase that has samples; returns the files written.
///
/// Phases render in parallel, each on a thread of its own: inferno picks frame colours from a
/// thread-local generator that starts at the same seed in every thread, so each SVG comes out the
/// same whatever else was rendered before it.
pub fn write(
    folded: &Folded,
    svg: Option<&Path>,
    folded_path: Option<&Path>,
    title: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    let phases: Vec<(&String, &BTreeMap<Arc<str>, u64>)> = folded.by_phase.iter().collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(phases.len());
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<anyhow::Result<Vec<PathBuf>>>> = (0..phases.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(phase_name, stacks)) = phases.get(i) else { break };
                        // A fresh thread per phase: see above.
                        let r = std::thread::scope(|s| {
                            s.spawn(|| write_phase(folded, phase_name, stacks, svg, folded_path, title)).join()
                        });
                        done.push((i, r.unwrap_or_else(|_| Err(anyhow::anyhow!("writing the {phase_name} flamegraph panicked")))));
                    }
                    done
                })
            })
            .collect();
        for w in workers {
            for (i, r) in w.join().unwrap_or_default() {
                results[i] = Some(r);
            }
        }
    });
    let mut written = Vec::new();
    for r in results {
        written.extend(r.unwrap_or_else(|| Err(anyhow::anyhow!("a flamegraph writer panicked")))?);
    }
    Ok(written)
}

/// A multiply-xor hash (as rustc's FxHash) for function names: several times faster than
/// the default SipHash on 60-byte names, and these keys come from symbol tables, not from a
/// peer that could pick colliding names.
#[derive(Default, Clone, Copy)]
struct NameHasher(u64);

impl std::hash::Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0xf135_7aea_2e62_a9c5;
        let (words, rest) = bytes.as_chunks::<8>();
        let mut h = self.0;
        for w in words {
            h = h.wrapping_add(u64::from_le_bytes(*w)).wrapping_mul(K);
        }
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            h = h.wrapping_add(u64::from_le_bytes(last) ^ rest.len() as u64).wrapping_mul(K);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

/// (function, self share, total share) of the "all" profile, by self share.
///
/// Lines come sorted, so consecutive lines share their first frames: those keep the entries
/// the previous line looked up, and only the frames after them are hashed.
pub fn top_functions(folded: &Folded, n: usize) -> Vec<(String, f64, f64)> {
    struct Func<'a> {
        name: &'a str,
        self_n: u64,
        total_n: u64,
        /// The last line counted in `total_n` (a function counts once per stack).
        line: usize,
    }
    let Some(all) = folded.by_phase.get("all") else { return Vec::new() };
    let total: u64 = all.values().sum();
    if total == 0 {
        return Vec::new();
    }
    let mut funcs: Vec<Func> = Vec::new();
    let mut index: HashMap<&str, usize, std::hash::BuildHasherDefault<NameHasher>> = HashMap::default();
    // The previous line's frames after the first (the command name): (end byte, function).
    let mut path: Vec<(usize, usize)> = Vec::new();
    let mut prev = "";
    for (line, (stack, &c)) in all.iter().enumerate() {
        let stack: &str = stack;
        let Some(first_end) = stack.find(';') else {
            path.clear();
            prev = stack;
            continue;
        };
        let l = common_prefix(prev.as_bytes(), stack.as_bytes());
        let keep = path
            .iter()
            .take_while(|&&(end, _)| end < l || (end == l && stack.as_bytes().get(end).is_none_or(|&b| b == b';')))
            .count();
        path.truncate(keep);
        let mut start = path.last().map_or(first_end, |&(end, _)| end) + 1;
        while start <= stack.len() {
            let end = frame_end(stack, start);
            let name = &stack[start..end];
            let f = *index.entry(name).or_insert_with(|| {
                funcs.push(Func { name, self_n: 0, total_n: 0, line: usize::MAX });
                funcs.len() - 1
            });
            path.push((end, f));
            start = end + 1;
        }
        for &(_, f) in &path {
            let f = &mut funcs[f];
            if f.line != line {
                f.total_n += c;
                f.line = line;
            }
        }
        if let Some(&(_, leaf)) = path.last() {
            funcs[leaf].self_n += c;
        }
        prev = stack;
    }
    let mut v: Vec<(String, f64, f64)> = funcs
        .iter()
        .map(|f| (f.name.to_string(), f.self_n as f64 / total as f64, f.total_n as f64 / total as f64))
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

    /// The fold as it was before stacks were folded once per (user, kernel) pair: per sample,
    /// every frame escaped and the line built and counted in "all" and in its phase.
    fn reference_fold(raw: &RawProfile, cache: &UserFrames, kallsyms: &Kallsyms, comm: &str) -> Folded {
        let mut out = Folded::default();
        let mut by_phase: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (key, n) in &raw.samples {
            let n = *n;
            out.samples += n;
            let mut frames: Vec<String> = vec![comm.to_string()];
            match cache.get(&key.user_stack) {
                Some(names) if key.user_stack >= 0 => {
                    if !names.first().is_some_and(|root| {
                        THREAD_ROOTS.iter().any(|r| root == r) || root.starts_with("[unknown libc.so")
                    }) {
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
            let line = frames.iter().map(|f| f.replace(';', ":")).collect::<Vec<_>>().join(";");
            let phase_name = phase::NAMES.get(key.phase as usize).copied().unwrap_or("other");
            *by_phase.entry("all".into()).or_default().entry(line.clone()).or_default() += n;
            *by_phase.entry(phase_name.into()).or_default().entry(line).or_default() += n;
        }
        out.by_phase =
            by_phase.into_iter().map(|(p, m)| (p, m.into_iter().map(|(l, n)| (Arc::from(l), n)).collect())).collect();
        out
    }

    /// Names that sort differently as frames than as text (`foo` < `foo(int)` as frames, but
    /// `foo(int);…` < `foo;…` as text), with `;` and spaces in them; the last one, as a leaf,
    /// reads to inferno as a second count column.
    const TRICKY: &[&str] = &[
        "foo",
        "foo(int)",
        "foo bar",
        "foo;bar",
        "fo",
        "foo_[k]",
        "a::b<c; 2>",
        "[unknown]",
        "z",
        "foo!",
        "foo::{{closure}}",
        "foo2",
        "foo 1",
    ];

    /// A small profile with every case `fold` distinguishes: stacks sharing prefixes, names
    /// with `;`, two stack ids that symbolize alike, missing and negative stack ids, a count of
    /// 0, phases out of range, kernel frames with and without a symbol.
    ///
    /// Odd seeds also use the name inferno reads as a count; one sample of `heavy` makes
    /// inferno leave out the frames narrower than `heavy` / 10,000.
    fn tricky_profile(seed: u64, n: usize, heavy: u64) -> (RawProfile, UserFrames, Kallsyms) {
        let names = if seed % 2 == 1 { TRICKY } else { &TRICKY[..TRICKY.len() - 1] };
        let mut x = seed;
        let mut rnd = move |m: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as usize
        };
        let kallsyms = Kallsyms::parse("ffffffff81000000 T entry;64\nffffffff81000100 t do_thing\nffffffff81000200 T schedule\n");
        let mut raw = RawProfile::default();
        let mut cache = UserFrames::new();
        for id in 0..40 {
            let depth = 1 + rnd(5);
            let names_ = names;
            let mut names: Vec<String> = Vec::new();
            if rnd(3) > 0 {
                names.push(["_start", "start_thread", "[unknown libc.so.6]", "main"][rnd(4)].to_string());
            }
            names.extend((0..depth).map(|_| names_[rnd(names_.len())].to_string()));
            raw.stacks.insert(id, vec![0x1000; names.len()]);
            cache.insert(id, names);
        }
        // Two ids with the same frames, as two call sites in the same functions give.
        cache.insert(40, cache[&3].clone());
        raw.stacks.insert(40, vec![0x1000; cache[&3].len()]);
        for id in 100..110 {
            let k: Vec<u64> = (0..1 + rnd(3)).map(|_| [0xffffffff81000010, 0xffffffff81000110, 0xffffffff81000210, 0x10][rnd(4)]).collect();
            raw.stacks.insert(id, k);
        }
        for _ in 0..n {
            let user_stack = [rnd(41) as i32, -1, 77, 3, 40][rnd(5).min(rnd(5))];
            let kernel_stack = [-1, 100 + rnd(10) as i32, 200, -14][rnd(4)];
            let phase = [0, 1, 2, 9][rnd(4)];
            let count = [0, 1, 2, 57][rnd(4)];
            raw.samples.push((SampleKey { tgid: 1 + rnd(2) as u32, phase, user_stack, kernel_stack }, count));
        }
        for phase in 0..3 {
            raw.samples.push((SampleKey { tgid: 1, phase, user_stack: 5, kernel_stack: -1 }, heavy));
        }
        (raw, cache, kallsyms)
    }

    fn same_folded(a: &Folded, b: &Folded) {
        assert_eq!((a.samples, a.no_user_stack, a.truncated, a.unit), (b.samples, b.no_user_stack, b.truncated, b.unit));
        assert_eq!(a.by_phase, b.by_phase);
    }

    #[test]
    fn fold_matches_the_reference() {
        for seed in 1..200 {
            let (raw, mut cache, kallsyms) = tricky_profile(seed, 1 + seed as usize % 90, seed * 100);
            let expected = reference_fold(&raw, &cache, &kallsyms, "srv;1 x");
            let folded = fold(&raw, &mut Symbolizer::new(), &mut cache, &kallsyms, "srv;1 x");
            same_folded(&folded, &expected);
        }
        let empty = fold(&RawProfile::default(), &mut Symbolizer::new(), &mut UserFrames::new(), &Kallsyms::default(), "x");
        assert!(empty.by_phase.is_empty() && empty.samples == 0);
    }

    #[test]
    fn write_matches_the_reference() {
        let dir = std::env::temp_dir().join(format!("inferscope-profile-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let (mut pruned, mut not_pruned) = (0, 0);
        for seed in 1..40 {
            // From nothing left out to nearly everything.
            let heavy = [0, 1_000, 30_000, 100_000, 300_000, 1_000_000, 100_000_000][seed as usize % 7];
            let (raw, mut cache, kallsyms) = tricky_profile(seed, 100 + seed as usize * 37 % 400, heavy);
            let folded = fold(&raw, &mut Symbolizer::new(), &mut cache, &kallsyms, "srv");
            assert!(folded.by_phase.len() == 5, "all + idle, prefill, decode, other: {:?}", folded.by_phase.keys());
            let (svg, folded_path) = (dir.join("cpu.svg"), dir.join("cpu.folded"));
            let written = write(&folded, Some(&svg), Some(&folded_path), "t").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(written.len(), 10);
            for (phase_name, stacks) in &folded.by_phase {
                match pruned_for_svg(stacks, inferno::flamegraph::Options::default().min_width) {
                    Some(lines) if lines.len() < stacks.len() => pruned += 1,
                    _ => not_pruned += 1,
                }
                // As before: one line string per stack, joined; the SVG from those lines on a
                // fresh thread (inferno's colour generator is per thread).
                let lines = folded_lines(stacks);
                let text = std::fs::read_to_string(phase_path(&folded_path, phase_name)).unwrap_or_default();
                assert_eq!(text, lines.join("\n") + "\n", "seed {seed}, {phase_name} folded");
                let count: u64 = stacks.values().sum();
                let title = format!("t — {phase_name}, {count} samples");
                let expected = std::thread::spawn(move || {
                    let mut opts = inferno::flamegraph::Options::default();
                    opts.title = title;
                    let mut out = Vec::new();
                    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut out).map(|_| out)
                })
                .join()
                .unwrap_or_else(|_| panic!("inferno panicked"));
                let got = std::fs::read_to_string(phase_path(&svg, phase_name)).unwrap_or_default();
                match expected {
                    Ok(expected) => {
                        assert!(got == String::from_utf8_lossy(&expected), "seed {seed}, {phase_name} svg differs")
                    }
                    Err(e) => panic!("{phase_name}: {e}"),
                }
            }
        }
        assert!(pruned > 40 && not_pruned > 40, "{pruned} phases drawn from pruned lines, {not_pruned} from all");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn count_byte_counts() {
        let mut s: Vec<u8> = (0..20_000u32).map(|i| if i % 3 == 0 { b';' } else { (i % 251) as u8 }).collect();
        for end in [0, 1, 7, 8, 9, 2039, 2040, 2041, 4080, 20_000] {
            assert_eq!(count_byte(&s[..end], b';'), s[..end].iter().filter(|&&b| b == b';').count(), "{end}");
        }
        s.fill(b';');
        assert_eq!(count_byte(&s, b';'), 20_000);
        assert_eq!(count_byte(&s, 0), 0);
    }

    /// `top_functions` as it was: every frame of every line hashed, a set per line.
    fn reference_top_functions(folded: &Folded) -> Vec<(String, f64, f64)> {
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
        total_n
            .iter()
            .map(|(f, &t)| (f.to_string(), *self_n.get(f).unwrap_or(&0) as f64 / total as f64, t as f64 / total as f64))
            .collect()
    }

    #[test]
    fn top_functions_matches_the_reference() {
        for seed in 1..100 {
            let (raw, mut cache, kallsyms) = tricky_profile(seed, 1 + seed as usize % 90, seed * 100);
            let mut folded = fold(&raw, &mut Symbolizer::new(), &mut cache, &kallsyms, "srv");
            if seed % 3 == 0 {
                // Lines of the command name alone, and empty frames.
                let all = folded.by_phase.entry("all".into()).or_default();
                all.insert("srv".into(), 5);
                all.insert("srv;;x;;".into(), 3);
                all.insert("srv;;x;;;".into(), 2);
            }
            let mut got = top_functions(&folded, usize::MAX);
            assert!(got.windows(2).all(|w| (w[0].1, w[0].2) >= (w[1].1, w[1].2)), "by self, then total");
            let mut expected = reference_top_functions(&folded);
            got.sort_by(|a, b| a.0.cmp(&b.0));
            expected.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(got, expected, "seed {seed}");
        }
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
