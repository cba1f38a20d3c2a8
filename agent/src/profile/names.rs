//! Interning of function names: each held once and numbered, so that stacks are lists of ids.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

/// Function names, each held once and numbered (`;`, which separates frames in the folded
/// format, replaced by `:`): stacks repeat the same few thousand names.
#[derive(Debug, Default, Clone)]
pub(super) struct Names {
    ids: HashMap<Arc<str>, u32, BuildHasherDefault<NameHasher>>,
    pub(super) by_id: Vec<Arc<str>>,
}

impl Names {
    pub(super) fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let escaped = name.replace(';', ":");
        if let Some(&id) = self.ids.get(escaped.as_str()) {
            return id;
        }
        let id = self.by_id.len() as u32;
        let name: Arc<str> = Arc::from(escaped);
        self.by_id.push(Arc::clone(&name));
        self.ids.insert(name, id);
        id
    }

    pub(super) fn name(&self, id: u32) -> &str {
        &self.by_id[id as usize]
    }
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
