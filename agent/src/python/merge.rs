//! Mixed stacks: the Python frames of a sample go where the interpreter ran them, in place of
//! the native `_PyEval_EvalFrameDefault` frame of the eval-loop call that ran them. The kernel
//! marks the outermost frame of each eval-loop call (`frame_flag::ENTRY`), which splits the
//! Python frames into one group per call.

use agent_common::python::{frame_flag, PyFrame};

/// The native function Python frames replace.
pub const EVAL_FRAME: &str = "_PyEval_EvalFrameDefault";

/// Python frames (leaf first, as recorded) split into the eval-loop calls that ran them:
/// groups root first, frames in each root first.
pub fn eval_groups(frames_leaf_first: &[PyFrame]) -> Vec<Vec<PyFrame>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    for f in frames_leaf_first {
        current.push(*f);
        if f.flags & frame_flag::ENTRY != 0 {
            current.reverse();
            groups.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        current.reverse();
        groups.push(current);
    }
    groups.reverse();
    groups
}

/// `native` (root first) with each eval-loop frame replaced by its group of Python frames
/// (`groups`, root first, already named). When the native walk reached the thread's first frame
/// (`native_complete`), groups pair with eval frames from the root; otherwise (the root end is
/// missing) from the leaf. Eval frames without a group stay; groups without an eval frame go
/// next to the nearest paired one, or on top of the stack when none is.
pub fn merge(native: Vec<String>, groups: Vec<Vec<String>>, native_complete: bool) -> Vec<String> {
    let evals: Vec<usize> = native.iter().enumerate().filter(|(_, n)| *n == EVAL_FRAME).map(|(i, _)| i).collect();
    if groups.is_empty() {
        return native;
    }
    if evals.is_empty() {
        let mut out = native;
        out.extend(groups.into_iter().flatten());
        return out;
    }
    let pairs = evals.len().min(groups.len());
    // (eval index in `native`, groups placed there) in native order.
    let mut placed: Vec<(usize, Vec<Vec<String>>)> = evals.iter().map(|&i| (i, Vec::new())).collect();
    let mut groups = groups;
    if native_complete {
        let extra = groups.split_off(pairs);
        for (slot, g) in placed.iter_mut().zip(groups) {
            slot.1.push(g);
        }
        if let Some(last) = placed.get_mut(pairs - 1) {
            last.1.extend(extra);
        }
    } else {
        let from_eval = evals.len() - pairs;
        let from_group = groups.len() - pairs;
        let paired = groups.split_off(from_group);
        let extra = groups;
        for (slot, g) in placed[from_eval..].iter_mut().zip(paired) {
            slot.1.push(g);
        }
        let first = &mut placed[from_eval].1;
        let mut both = extra;
        both.append(first);
        *first = both;
    }
    let mut out = Vec::with_capacity(native.len() + 16);
    let mut next = placed.into_iter().peekable();
    for (i, name) in native.into_iter().enumerate() {
        match next.peek() {
            Some((at, gs)) if *at == i => {
                if gs.is_empty() {
                    out.push(name);
                } else {
                    out.extend(gs.iter().flatten().cloned());
                }
                next.next();
            }
            _ => out.push(name),
        }
    }
    out
}
