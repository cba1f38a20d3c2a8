//! CPU profiles: in-kernel sample counts → symbolized, folded stacks per request phase →
//! flamegraph SVGs (inferno) and folded files, plus a "top functions" table.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use agent_common::phase;

use crate::symbols::Symbolizer;

mod kallsyms;
mod names;
mod raw;
mod stack;
mod symbolize;

pub use kallsyms::Kallsyms;
pub use raw::{ns_to_us, RawProfile};
pub use stack::{folded_lines, Stack};
pub use symbolize::{symbolize_new, UserFrames};

use names::Names;
use stack::{cmp_frame, one_fold, StackText};

/// Folded stacks per phase ("all" holds everything).
#[derive(Debug, Default, Clone)]
pub struct Folded {
    /// Stack → count; "all" and its phase share the same stacks.
    pub by_phase: BTreeMap<String, BTreeMap<Stack, u64>>,
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

/// Phase slots while folding: `phase::NAMES`, then "other" for anything else.
const PHASE_SLOTS: usize = phase::NAMES.len() + 1;

fn slot_name(slot: usize) -> &'static str {
    phase::NAMES.get(slot).copied().unwrap_or("other")
}

/// Sort keys for folded lines without comparing their text: every name ranked twice, as a
/// frame followed by another (`name;`) and as the last one (`name` and the end of the line).
/// Those pieces are prefix-free, so lines order as the sequences of their pieces' ranks do:
/// written big-endian, a line's key is a short byte string (4 bytes a frame, not ~70) that
/// `memcmp` orders as the line.
struct LineKeys {
    /// (rank as the last frame, rank followed by another), by name id.
    ranks: Vec<[u32; 2]>,
}

impl LineKeys {
    fn new(names: &Names) -> Self {
        let mut pieces: Vec<(u32, bool)> =
            (0..names.by_id.len() as u32).flat_map(|id| [(id, false), (id, true)]).collect();
        pieces.sort_unstable_by(|&(a, a_more), &(b, b_more)| cmp_frame(names.name(a), a_more, names.name(b), b_more));
        let mut ranks = vec![[0; 2]; names.by_id.len()];
        for (rank, &(id, more)) in (0u32..).zip(&pieces) {
            ranks[id as usize][usize::from(more)] = rank;
        }
        Self { ranks }
    }

    /// Appends the key of the line of `frames` (after the command name, shared by all lines).
    fn push(&self, frames: &[u32], key: &mut Vec<u8>) {
        for (i, &id) in frames.iter().enumerate() {
            key.extend_from_slice(&self.ranks[id as usize][usize::from(i + 1 < frames.len())].to_be_bytes());
        }
    }
}

/// Folds the samples into one stack per distinct line and counts them per phase. Each distinct
/// (user, kernel) stack pair is counted once per phase and the pairs are sorted by short keys;
/// no line text is built here.
pub fn fold(
    raw: &RawProfile,
    symbolizer: &mut Symbolizer,
    cache: &mut UserFrames,
    kallsyms: &Kallsyms,
    comm: &str,
) -> Folded {
    /// A distinct (user, kernel) stack pair: its counts per phase slot (`None`: no sample
    /// there; a sample of count 0 still lists the line, as it always has).
    struct Pair<'a> {
        user: &'a [u32],
        kernel: &'a [u32],
        counts: [Option<u64>; PHASE_SLOTS],
    }
    symbolize_new(raw, symbolizer, cache);
    let UserFrames { stacks: user_stacks, names } = cache;
    let comm = names.intern(comm);
    let no_user_stack = [names.intern("[no user stack]")];
    let mut kernel_stacks: HashMap<i32, Vec<u32>> = HashMap::new();
    for (key, _) in &raw.samples {
        if key.kernel_stack < 0 || kernel_stacks.contains_key(&key.kernel_stack) {
            continue;
        }
        if let Some(ips) = raw.stacks.get(&key.kernel_stack) {
            let frames = ips
                .iter()
                .rev()
                .map(|&ip| names.intern(&format!("{}_[k]", kallsyms.lookup(ip).unwrap_or("[unknown]"))))
                .collect();
            kernel_stacks.insert(key.kernel_stack, frames);
        }
    }
    let names = &*names;
    let mut out = Folded::default();
    let mut pair_index: HashMap<(i32, i32), usize> = HashMap::new();
    // Whether a name is a thread's outermost frame, by name id (0: not looked at yet).
    let mut root = vec![0u8; names.by_id.len()];
    let mut pairs: Vec<Pair> = Vec::new();
    for (key, n) in &raw.samples {
        let n = *n;
        out.samples += n;
        let user = user_stacks.get(&key.user_stack).filter(|_| key.user_stack >= 0);
        match user {
            Some(frames) => {
                // libc's own entry (__libc_start_call_main) is a local symbol: an unnamed libc root counts as complete.
                let complete = frames.first().is_some_and(|&id| {
                    let known = &mut root[id as usize];
                    if *known == 0 {
                        let name = names.name(id);
                        *known = if THREAD_ROOTS.contains(&name) || name.starts_with("[unknown libc.so") { 2 } else { 1 };
                    }
                    *known == 2
                });
                if !complete {
                    out.truncated += n;
                }
            }
            None => out.no_user_stack += n,
        }
        let kernel = kernel_stacks.get(&key.kernel_stack).filter(|_| key.kernel_stack >= 0);
        let id = (if user.is_some() { key.user_stack } else { -1 }, if kernel.is_some() { key.kernel_stack } else { -1 });
        let i = *pair_index.entry(id).or_insert_with(|| {
            pairs.push(Pair {
                user: user.map_or(&no_user_stack[..], Vec::as_slice),
                kernel: kernel.map_or(&[][..], Vec::as_slice),
                counts: [None; PHASE_SLOTS],
            });
            pairs.len() - 1
        });
        let slot = (key.phase as usize).min(PHASE_SLOTS - 1);
        *pairs[i].counts[slot].get_or_insert(0) += n;
    }
    // Every pair's frames (the command name first) in one array, and its sort key.
    let line_keys = LineKeys::new(names);
    let mut all_frames: Vec<u32> = Vec::new();
    let mut bounds = Vec::with_capacity(pairs.len());
    let mut keys = Vec::new();
    let mut key_end = Vec::with_capacity(pairs.len() + 1);
    key_end.push(0);
    for p in &pairs {
        let start = all_frames.len();
        all_frames.push(comm);
        all_frames.extend_from_slice(p.user);
        all_frames.extend_from_slice(p.kernel);
        bounds.push((start as u32, all_frames.len() as u32));
        line_keys.push(&all_frames[start + 1..], &mut keys);
        key_end.push(keys.len());
    }
    // Sort once, by key; different stack ids can symbolize to the same line: merge those.
    let key = |i: usize| &keys[key_end[i]..key_end[i + 1]];
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_unstable_by(|&a, &b| key(a).cmp(key(b)));
    let (names, all_frames): (Arc<[Arc<str>]>, Arc<[u32]>) = (names.by_id.as_slice().into(), all_frames.into());
    let mut stacks: Vec<(Stack, [Option<u64>; PHASE_SLOTS])> = Vec::with_capacity(pairs.len());
    for (k, &i) in order.iter().enumerate() {
        let p = &pairs[i];
        match stacks.last_mut() {
            Some((_, counts)) if k > 0 && key(order[k - 1]) == key(i) => {
                for (c, n) in counts.iter_mut().zip(p.counts) {
                    if let Some(n) = n {
                        *c.get_or_insert(0) += n;
                    }
                }
            }
            _ => {
                let (start, end) = bounds[i];
                let stack = Stack {
                    names: Arc::clone(&names),
                    all_frames: Arc::clone(&all_frames),
                    start,
                    end,
                    rank: stacks.len() as u32,
                };
                stacks.push((stack, p.counts));
            }
        }
    }
    if !stacks.is_empty() {
        let all = stacks.iter().map(|(s, c)| (s.clone(), c.iter().flatten().sum()));
        out.by_phase.insert("all".into(), all.collect());
    }
    for slot in 0..PHASE_SLOTS {
        let in_phase: BTreeMap<Stack, u64> = stacks.iter().filter_map(|(s, c)| c[slot].map(|n| (s.clone(), n))).collect();
        if !in_phase.is_empty() {
            out.by_phase.insert(slot_name(slot).into(), in_phase);
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

/// Whether inferno reads `stack count` as exactly that stack and count, by what its first and
/// last frame names allow: no whitespace for its `trim` at either end, not a `# ` comment, no
/// empty first frame, and nothing after the last space that it would take for a second
/// (differential) count column. Remembered per name id.
struct ReadsAsIs<'a> {
    names: &'a [Arc<str>],
    /// Per name id: bit 0 looked at, bit 1 fine first, bit 2 fine last.
    known: Vec<u8>,
}

impl ReadsAsIs<'_> {
    fn flags(&mut self, id: u32) -> u8 {
        let known = &mut self.known[id as usize];
        if *known == 0 {
            let name: &str = &self.names[id as usize];
            let b = name.as_bytes();
            let tail = b.iter().rposition(|&c| c == b' ').map_or(0, |p| p + 1);
            let count_like = tail > 0 && b[tail..].iter().all(|&c| c.is_ascii_digit() || c == b'.');
            let first = !name.is_empty() && !name.starts_with(char::is_whitespace) && !name.starts_with("# ");
            let last = !name.ends_with(char::is_whitespace) && !count_like;
            *known = 1 | u8::from(first) << 1 | u8::from(last) << 2;
        }
        *known
    }

    /// The first `n` frames of `s`.
    fn line(&mut self, s: &Stack, n: usize) -> bool {
        let frames = &s.frames()[..n];
        match (frames.first(), frames.last()) {
            (Some(&first), Some(&last)) => self.flags(first) & 2 != 0 && self.flags(last) & 4 != 0,
            _ => false,
        }
    }
}

/// One phase's stacks as inferno needs them for the same SVG, with every frame that inferno
/// would leave out of the drawing (narrower than `min_width` percent of all samples) folded
/// into its parent beforehand, so that inferno does not merge 100k lines to draw a few thousand
/// frames: (stack, frames of it to write, count). `None` where that cannot be done exactly
/// (then inferno gets every line).
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
/// All stacks must be of one fold (frame ids compare as names).
/// Also returns which output lines are cut ones.
#[allow(clippy::type_complexity)]
fn pruned_for_svg<'a>(lines: &[(&'a Stack, u64)], min_width: f64) -> Option<(Vec<(&'a Stack, usize, u64)>, Vec<usize>)> {
    struct Open {
        /// Frames shared by the lines of this interval.
        v: usize,
        first: usize,
        time: u64,
        out: usize,
    }
    let total = lines.iter().try_fold(0u64, |t, l| t.checked_add(l.1))?;
    let names = &lines.first()?.0.names;
    let mut as_is = ReadsAsIs { names, known: vec![0; names.len()] };
    if total == 0 {
        return None;
    }
    // inferno's own arithmetic, so that the same frames fall under it.
    let widthpertime_pct = 100.0 / total as f64;
    let minwidth_time = min_width / widthpertime_pct;
    let pruned = |w: u64| (w as f64) < minwidth_time;
    // Frames shared by consecutive stacks. `None` where "a count" would not sort before
    // "b count" as a and b do (inferno sorts whole lines): a's last name is where they part and
    // a prefix of b's name there, followed by a space or less.
    let shared = |a: &Stack, b: &Stack| -> Option<usize> {
        let s = a.frames().iter().zip(b.frames().iter()).take_while(|(x, y)| x == y).count();
        if s + 1 == a.frames().len() && s < b.frames().len() {
            let (x, y) = (a.frame(s), b.frame(s));
            if y.starts_with(x) && y.as_bytes()[x.len()] <= b' ' {
                return None;
            }
        }
        // b's frames a prefix of a's (or the same stack): not sorted.
        (s < b.frames().len()).then_some(s)
    };
    // A frame at index `start`, pruned: its stack up to that frame's child.
    let cut = |s: &Stack, start: usize| s.frames().len().min(start + 2);
    let mut out: Vec<(&Stack, usize, u64)> = Vec::new();
    let mut merged = Vec::new();
    let mut open = vec![Open { v: 0, first: 0, time: 0, out: 0 }];
    let mut time = 0u64;
    let mut prev_shared = 0;
    for (i, &(stack, n)) in lines.iter().enumerate() {
        if !as_is.line(stack, stack.frames().len()) {
            return None;
        }
        let next_shared = match lines.get(i + 1) {
            Some(next) => shared(stack, next.0)?,
            None => 0,
        };
        let (line_time, line_out) = (time, out.len());
        time += n;
        // Frames of this line alone: count n.
        let own = prev_shared.max(next_shared);
        if stack.frames().len() > own && pruned(n) {
            merged.push(out.len());
            out.push((stack, cut(stack, own), n));
        } else {
            out.push((stack, stack.frames().len(), n));
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
                out.push((first, cut(first, parent_v), w));
            }
            last = Some((o.first, o.time, o.out));
        }
        if open.last().is_none_or(|o| o.v < next_shared) {
            let (first, time, out) = last.unwrap_or((i, line_time, line_out));
            open.push(Open { v: next_shared, first, time, out });
        }
        prev_shared = next_shared;
    }
    // The cut lines must read as they are (their order is checked once they are written).
    if !merged.iter().all(|&m| as_is.line(out[m].0, out[m].1)) {
        return None;
    }
    Some((out, merged))
}

/// `stack count` lines in one string, and where each ends.
fn lines_text(lines: &[(&Stack, usize, u64)]) -> (String, Vec<usize>) {
    use std::fmt::Write as _;
    let mut text = String::new();
    let mut ends = Vec::with_capacity(lines.len());
    let mut stack = StackText::default();
    for &(s, frames, n) in lines {
        text.push_str(stack.set(s, frames));
        let _ = write!(text, " {n}");
        ends.push(text.len());
        text.push('\n');
    }
    (text, ends)
}

/// The lines inferno gets for one phase's SVG (see `pruned_for_svg`), written out.
fn svg_lines(stacks: &BTreeMap<Stack, u64>, min_width: f64) -> (String, Vec<usize>) {
    let stacks = one_fold(stacks);
    let all: Vec<(&Stack, u64)> = stacks.iter().map(|(s, &n)| (s, n)).collect();
    if let Some((lines, merged)) = pruned_for_svg(&all, min_width) {
        let (text, ends) = lines_text(&lines);
        let line = |k: usize| k.checked_sub(1).map_or(0, |p| ends[p] + 1)..ends[k];
        // Each cut line sorts between its neighbours (checked, not only argued).
        let in_order = |k: usize| k + 1 >= ends.len() || text[line(k)] < text[line(k + 1)];
        if merged.iter().all(|&m| (m == 0 || in_order(m - 1)) && in_order(m)) {
            return (text, ends);
        }
    }
    lines_text(&all.iter().map(|&(s, n)| (s, s.frames().len(), n)).collect::<Vec<_>>())
}

/// One phase's folded file and SVG; returns the files written, in that order.
fn write_phase(
    folded: &Folded,
    phase_name: &str,
    stacks: &BTreeMap<Stack, u64>,
    svg: Option<&Path>,
    folded_path: Option<&Path>,
    title: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    use std::fmt::Write as _;
    let mut written = Vec::new();
    if let Some(p) = folded_path {
        let p = phase_path(p, phase_name);
        // Streamed: the lines are already in order, no need to hold the file in memory.
        let mut f = std::fs::File::create(&p)?;
        let mut buf = String::with_capacity((1 << 20) + (1 << 16));
        let mut text = StackText::default();
        for (stack, n) in stacks {
            buf.push_str(text.set(stack, stack.frames().len()));
            let _ = writeln!(buf, " {n}");
            if buf.len() >= 1 << 20 {
                f.write_all(buf.as_bytes())?;
                buf.clear();
            }
        }
        f.write_all(buf.as_bytes())?;
        written.push(p);
    }
    if let Some(p) = svg {
        let p = phase_path(p, phase_name);
        let count: u64 = stacks.values().sum();
        let mut opts = inferno::flamegraph::Options::default();
        opts.title = format!("{title} — {phase_name}, {count} {}", folded.unit_name());
        opts.count_name = folded.unit_name().to_string();
        let mut f = std::io::BufWriter::new(std::fs::File::create(&p)?);
        svg_of(stacks, &mut opts, &mut f)?;
        f.flush()?;
        written.push(p);
    }
    Ok(written)
}

/// The inferno flamegraph of `stacks` (what `inferno::flamegraph::from_lines` draws from their
/// folded lines, byte for byte), without handing inferno the frames it would not draw.
pub fn svg_of(
    stacks: &BTreeMap<Stack, u64>,
    opts: &mut inferno::flamegraph::Options,
    out: impl std::io::Write,
) -> std::io::Result<()> {
    let (text, ends) = svg_lines(stacks, opts.min_width);
    let lines = ends.iter().scan(0, |start, &end| {
        let line = &text[*start..end];
        *start = end + 1;
        Some(line)
    });
    inferno::flamegraph::from_lines(opts, lines, out)
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
    let phases: Vec<(&String, &BTreeMap<Stack, u64>)> = folded.by_phase.iter().collect();
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

/// (function, self share, total share) of the "all" profile, by self share.
pub fn top_functions(folded: &Folded, n: usize) -> Vec<(String, f64, f64)> {
    let Some(all) = folded.by_phase.get("all") else { return Vec::new() };
    let total: u64 = all.values().sum();
    if total == 0 {
        return Vec::new();
    }
    let all = one_fold(all);
    let Some(names) = all.keys().next().map(|s| Arc::clone(&s.names)) else { return Vec::new() };
    // By name id: self count, total count, the last stack counted in total (a function counts
    // once per stack).
    let mut funcs = vec![(0u64, 0u64, usize::MAX); names.len()];
    for (i, (stack, &c)) in all.iter().enumerate() {
        // Frames after the first (the command name).
        let frames = stack.frames().get(1..).unwrap_or_default();
        if let Some(&leaf) = frames.last() {
            funcs[leaf as usize].0 += c;
        }
        for &f in frames {
            let f = &mut funcs[f as usize];
            if f.2 != i {
                f.1 += c;
                f.2 = i;
            }
        }
    }
    let mut v: Vec<(String, f64, f64)> = funcs
        .iter()
        .zip(names.iter())
        .filter(|(f, _)| f.2 != usize::MAX)
        .map(|(f, name)| (name.to_string(), f.0 as f64 / total as f64, f.1 as f64 / total as f64))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.total_cmp(&a.2)));
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests;
