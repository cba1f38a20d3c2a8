//! Flamegraph SVGs (inferno) of folded stacks, drawn from lines pruned of the frames inferno
//! would leave out, byte for byte the SVG of all lines.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::stack::{one_fold, Stack, StackText};

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
pub(super) fn pruned_for_svg<'a>(
    lines: &[(&'a Stack, u64)],
    min_width: f64,
) -> Option<(Vec<(&'a Stack, usize, u64)>, Vec<usize>)> {
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
