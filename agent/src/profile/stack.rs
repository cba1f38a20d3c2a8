//! Folded stacks: frames as name ids shared by all stacks of a fold, their order (as their
//! folded text) and their text.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::names::Names;

/// One folded stack, `comm;frame;frame;…` (root first; names never contain `;`), kept as the
/// name ids of the fold it came from: 100k distinct stacks of 2 KB each are not held as 200 MB of
/// text. Shown (`Display`) and ordered as that text.
#[derive(Clone)]
pub struct Stack {
    pub(super) names: Arc<[Arc<str>]>,
    /// The frames of all stacks of its fold; this one's are `all_frames[start..end]`.
    pub(super) all_frames: Arc<[u32]>,
    pub(super) start: u32,
    pub(super) end: u32,
    /// Position among the stacks of its fold, which are numbered in text order.
    pub(super) rank: u32,
}

impl Stack {
    pub(super) fn frames(&self) -> &[u32] {
        &self.all_frames[self.start as usize..self.end as usize]
    }

    pub(super) fn frame(&self, i: usize) -> &str {
        &self.names[self.frames()[i] as usize]
    }

    fn frame_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.frames().iter().map(|&id| &*self.names[id as usize])
    }

    /// Stacks of one fold: `names`, and the frames of each stack, in text order.
    fn fold_of(names: Arc<[Arc<str>]>, stacks: impl IntoIterator<Item = impl IntoIterator<Item = u32>>) -> Vec<Stack> {
        let mut all_frames = Vec::new();
        let mut bounds = Vec::new();
        for frames in stacks {
            let start = all_frames.len() as u32;
            all_frames.extend(frames);
            bounds.push((start, all_frames.len() as u32));
        }
        let all_frames: Arc<[u32]> = all_frames.into();
        (0u32..)
            .zip(bounds)
            .map(|(rank, (start, end))| Stack {
                names: Arc::clone(&names),
                all_frames: Arc::clone(&all_frames),
                start,
                end,
                rank,
            })
            .collect()
    }

    /// Appends the text of the first `n` frames.
    fn push_text(&self, n: usize, out: &mut String) {
        for (i, name) in self.frame_names().take(n).enumerate() {
            if i > 0 {
                out.push(';');
            }
            out.push_str(name);
        }
    }

    fn same_fold(&self, other: &Stack) -> bool {
        Arc::ptr_eq(&self.names, &other.names)
    }
}

impl std::fmt::Display for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = String::new();
        self.push_text(self.frames().len(), &mut text);
        f.write_str(&text)
    }
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl Ord for Stack {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if self.same_fold(other) {
            return self.rank.cmp(&other.rank);
        }
        // Stacks of different folds: as their text, frame by frame.
        let (la, lb) = (self.frames().len(), other.frames().len());
        for i in 0..la.min(lb) {
            let (a, b) = (self.frame(i), other.frame(i));
            if a != b {
                return cmp_frame(a, i + 1 < la, b, i + 1 < lb);
            }
        }
        la.cmp(&lb)
    }
}

impl PartialOrd for Stack {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Stack {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Stack {}

/// A stack from its folded text (frames split at `;`), in a fold of its own.
impl From<&str> for Stack {
    fn from(text: &str) -> Self {
        let mut names = Names::default();
        let frames: Vec<u32> = text.split(';').map(|f| names.intern(f)).collect();
        let mut fold = Stack::fold_of(names.by_id.into(), [frames]);
        fold.remove(0)
    }
}

/// `stacks` with all stacks in one fold: as they are, or (when stacks of several folds were
/// put together) renumbered into a new one.
pub(super) fn one_fold(stacks: &BTreeMap<Stack, u64>) -> std::borrow::Cow<'_, BTreeMap<Stack, u64>> {
    let mut keys = stacks.keys();
    if keys.next().is_none_or(|first| keys.all(|s| s.same_fold(first))) {
        return std::borrow::Cow::Borrowed(stacks);
    }
    let mut names = Names::default();
    let frames: Vec<Vec<u32>> = stacks.keys().map(|s| s.frame_names().map(|f| names.intern(f)).collect()).collect();
    let renumbered = Stack::fold_of(names.by_id.into(), frames);
    std::borrow::Cow::Owned(renumbered.into_iter().zip(stacks.values().copied()).collect())
}

pub fn folded_lines(stacks: &BTreeMap<Stack, u64>) -> Vec<String> {
    stacks.iter().map(|(s, n)| format!("{s} {n}")).collect()
}

/// Writes stacks as text, one after another: sorted stacks share their first frames, so only
/// the frames after those the previous stack shares are copied again.
#[derive(Default)]
pub(super) struct StackText<'a> {
    text: String,
    /// Where each frame of `text` ends.
    ends: Vec<usize>,
    prev: Option<&'a Stack>,
}

impl<'a> StackText<'a> {
    /// The first `n` frames of `s`.
    pub(super) fn set(&mut self, s: &'a Stack, n: usize) -> &str {
        let frames = &s.frames()[..n];
        let keep = match self.prev {
            Some(p) if p.same_fold(s) => {
                frames.iter().zip(p.frames()).take_while(|(a, b)| a == b).count().min(self.ends.len())
            }
            _ => 0,
        };
        self.ends.truncate(keep);
        self.text.truncate(self.ends.last().copied().unwrap_or(0));
        for &id in &frames[keep..] {
            if !self.ends.is_empty() {
                self.text.push(';');
            }
            self.text.push_str(&s.names[id as usize]);
            self.ends.push(self.text.len());
        }
        self.prev = Some(s);
        &self.text
    }
}

/// The byte order of two frames of folded lines where everything before them is the same:
/// `name` then `;` when another frame follows (`more`), or the end of the line.
pub(super) fn cmp_frame(a: &str, a_more: bool, b: &str, b_more: bool) -> std::cmp::Ordering {
    let l = common_prefix(a.as_bytes(), b.as_bytes());
    let next = |s: &str, more: bool| s.as_bytes().get(l).copied().or(more.then_some(b';'));
    next(a, a_more).cmp(&next(b, b_more))
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
