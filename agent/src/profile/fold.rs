//! Raw counts to folded stacks per request phase: user frames (symbolized) and kernel frames
//! (kallsyms) under the command name, one stack per distinct line.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use agent_common::{phase, unwind::outcome};

use super::kallsyms::Kallsyms;
use super::names::Names;
use super::raw::RawProfile;
use super::stack::{cmp_frame, Stack};
use super::symbolize::{symbolize_new, UserFrames};
use crate::symbols::Symbolizer;

/// Folded stacks per phase ("all" holds everything).
#[derive(Debug, Default, Clone)]
pub struct Folded {
    /// Stack → count; "all" and its phase share the same stacks.
    pub by_phase: BTreeMap<String, BTreeMap<Stack, u64>>,
    pub samples: u64,
    /// Samples whose user stack could not be read at all.
    pub no_user_stack: u64,
    /// Samples whose user stack stops before a thread entry point.
    pub truncated: u64,
    /// `truncated` by why the walk stopped: `no_cfi`, `depth_limit`, `read_fault`,
    /// `no_mapping` (`.eh_frame` unwinding), `frame_pointers` (a frame-pointer chain that ended
    /// before a thread entry point).
    pub truncated_by: BTreeMap<&'static str, u64>,
    /// Samples whose user stack was unwound from `.eh_frame` tables (the rest: frame pointers).
    pub unwound: u64,
    /// The unwind tables in the kernel when the profile was read (CPU profiles with unwinding).
    pub unwind_tables: Option<crate::unwind::TableStats>,
    /// Python frames: kernel walks and names (CPU profiles of a CPython process).
    pub python: Option<crate::python::PythonStats>,
    /// What the counts are: `None` = CPU samples; `Some("us")` = off-CPU microseconds.
    pub unit: Option<&'static str>,
}

impl Folded {
    pub fn unit_name(&self) -> &'static str {
        self.unit.unwrap_or("samples")
    }
}

/// Outermost frames of a complete user stack on Linux (glibc/musl, Rust std, Go not included).
pub(super) const THREAD_ROOTS: &[&str] = &[
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
pub(super) struct LineKeys {
    /// (rank as the last frame, rank followed by another), by name id.
    ranks: Vec<[u32; 2]>,
}

impl LineKeys {
    pub(super) fn new(names: &Names) -> Self {
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
    pub(super) fn push(&self, frames: &[u32], key: &mut Vec<u8>) {
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
    let UserFrames { stacks: user_stacks, names, .. } = cache;
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
                let how = raw.outcomes.get(&key.user_stack).copied();
                if how.is_some() {
                    out.unwound += n;
                }
                // libc's own entry (__libc_start_call_main) is a local symbol: an unnamed libc root counts as complete.
                let mut at_root = || {
                    frames.first().is_some_and(|&id| {
                        let known = &mut root[id as usize];
                        if *known == 0 {
                            let name = names.name(id);
                            *known = if THREAD_ROOTS.contains(&name) || name.starts_with("[unknown libc.so") {
                                2
                            } else {
                                1
                            };
                        }
                        *known == 2
                    })
                };
                let stopped = match how {
                    Some(outcome::COMPLETE) => None,
                    Some(outcome::NO_CFI) => Some("no_cfi"),
                    Some(outcome::DEPTH_LIMIT) => Some("depth_limit"),
                    Some(outcome::READ_FAULT) => Some("read_fault"),
                    Some(outcome::NO_MAPPING) => Some("no_mapping"),
                    _ => (!at_root()).then_some("frame_pointers"),
                };
                if let Some(why) = stopped {
                    out.truncated += n;
                    *out.truncated_by.entry(why).or_insert(0) += n;
                }
            }
            None => out.no_user_stack += n,
        }
        let kernel = kernel_stacks.get(&key.kernel_stack).filter(|_| key.kernel_stack >= 0);
        let id =
            (if user.is_some() { key.user_stack } else { -1 }, if kernel.is_some() { key.kernel_stack } else { -1 });
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
        let in_phase: BTreeMap<Stack, u64> =
            stacks.iter().filter_map(|(s, c)| c[slot].map(|n| (s.clone(), n))).collect();
        if !in_phase.is_empty() {
            out.by_phase.insert(slot_name(slot).into(), in_phase);
        }
    }
    out
}
