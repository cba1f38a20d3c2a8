//! User stack frames to function names (via `crate::symbols`), kept per stack id while the
//! process lives.

use std::collections::HashMap;
use std::path::Path;

use super::names::Names;
use super::raw::RawProfile;
use crate::symbols::Symbolizer;

/// User stacks already symbolized, by stack id (names root first, as in folded lines). Filled
/// while the process lives: after it exits its maps and files under /proc/PID are gone.
#[derive(Debug, Default, Clone)]
pub struct UserFrames {
    pub(super) stacks: HashMap<i32, Vec<u32>>,
    pub(super) names: Names,
    /// Names of Python code objects, per process (frames of CPython processes).
    pub python: crate::python::PySymbolizer,
}

impl UserFrames {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the symbolized stack `id` (names root first).
    pub fn insert<S: AsRef<str>>(&mut self, id: i32, names: impl IntoIterator<Item = S>) {
        let names = names.into_iter().map(|n| self.names.intern(n.as_ref())).collect();
        self.stacks.insert(id, names);
    }

    pub fn contains(&self, id: i32) -> bool {
        self.stacks.contains_key(&id)
    }

    /// The names of stack `id`, root first, once symbolized.
    pub fn frames(&self, id: i32) -> Option<Vec<&str>> {
        self.stacks.get(&id).map(|s| s.iter().map(|&n| self.names.name(n)).collect())
    }

    /// Stacks kept.
    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }
}

/// Symbolizes (root first) every user stack in `raw` not in `cache` yet.
pub fn symbolize_new(raw: &RawProfile, symbolizer: &mut Symbolizer, cache: &mut UserFrames) {
    for (key, _) in &raw.samples {
        if key.user_stack < 0 || cache.contains(key.user_stack) {
            continue;
        }
        let Some(ips) = raw.stacks.get(&key.user_stack) else { continue };
        let names: Vec<String> = ips
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
        let mut names = match raw.python.get(&key.user_stack) {
            Some(py) => with_python(names, py, raw, key.user_stack, key.tgid, &mut cache.python),
            None => names,
        };
        // A run of frames nothing could name reads as one `[unknown MODULE]`.
        names.dedup_by(|a, b| a == b && a.starts_with("[unknown"));
        cache.insert(key.user_stack, names);
    }
}

/// The native frames (root first) with the sample's Python frames in place of the eval-loop
/// frames that ran them (`crate::python::merge`).
fn with_python(
    native: Vec<String>,
    py: &crate::bpf::python::PyFrames,
    raw: &RawProfile,
    id: i32,
    pid: u32,
    python: &mut crate::python::PySymbolizer,
) -> Vec<String> {
    let groups = crate::python::eval_groups(&py.frames)
        .into_iter()
        .map(|g| g.iter().map(|f| python.name(pid, f.code).to_string()).collect())
        .collect();
    let complete = raw.outcomes.get(&id) == Some(&agent_common::unwind::outcome::COMPLETE);
    crate::python::merge(native, groups, complete)
}
