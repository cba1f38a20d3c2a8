//! The "top functions" table: each function's self and total share of the samples.

use std::sync::Arc;

use super::fold::Folded;
use super::stack::one_fold;

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
