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
        let names = ips.iter().rev().map(|&ip| {
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
        });
        cache.insert(key.user_stack, names);
    }
}
