//! The model a request asked for: the top-level `"model"` string of its JSON body, read by an
//! incremental scanner that keeps nothing but that one value (no prompt byte is ever copied),
//! bounded to [`MAX_MODEL`] bytes and sanitized to `[A-Za-z0-9._:/-]`. [`ModelCap`] bounds how
//! many distinct names a target gets as labels; later ones fold into `other`.

use std::collections::HashSet;

/// Longest model name kept; longer names are cut.
pub const MAX_MODEL: usize = 64;
/// Distinct model names kept per target by default; later ones become `other`.
pub const DEFAULT_MAX_MODELS: usize = 16;
/// The label of a request whose model was not seen (no JSON body, body start not captured,
/// the field not in the captured bytes, and no `model` in the response's first event).
pub const UNKNOWN: &str = "unknown";
/// The label of models past the per-target cap.
pub const OTHER: &str = "other";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the body's first byte (whitespace allowed).
    Start,
    /// Inside the object, outside any string.
    Scan,
    /// Inside a string: a depth-1 key, the model's value, or anything else (skipped).
    Str { what: Str, escape: bool },
    /// Found, not found, or lost (not an object, bytes skipped).
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Str {
    Key,
    Model,
    Other,
}

/// Scans a JSON body fed in pieces for its top-level `"model"` string.
#[derive(Debug, Clone)]
pub struct ModelScan {
    state: State,
    depth: u32,
    /// At depth 1, the next string is a key (after `{` or `,`), not a value.
    expect_key: bool,
    /// The depth-1 key just read was `model` (its value is the next string).
    model_key: bool,
    /// The current key's first bytes (enough to compare with `model`).
    key: [u8; 6],
    key_len: usize,
    value: String,
    found: Option<String>,
}

impl Default for ModelScan {
    fn default() -> Self {
        Self {
            state: State::Start,
            depth: 0,
            expect_key: false,
            model_key: false,
            key: [0; 6],
            key_len: 0,
            value: String::new(),
            found: None,
        }
    }
}

impl ModelScan {
    /// The whole of one JSON document (a response event): its top-level `model`, sanitized.
    pub fn of(bytes: &[u8]) -> Option<String> {
        let mut s = Self::default();
        s.feed(bytes);
        s.take()
    }

    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of the body were not captured: what follows cannot be placed.
    pub fn lose(&mut self) {
        self.state = State::Done;
    }

    /// The model name found so far (sanitized, at most [`MAX_MODEL`] bytes).
    pub fn take(&mut self) -> Option<String> {
        self.found.take()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match self.state {
                State::Done => return,
                State::Start => {
                    if b == b'{' {
                        self.depth = 1;
                        self.expect_key = true;
                        self.state = State::Scan;
                    } else if !b.is_ascii_whitespace() {
                        self.state = State::Done;
                    }
                }
                State::Scan => match b {
                    b'"' => {
                        let what = if self.depth == 1 && self.expect_key {
                            self.key_len = 0;
                            Str::Key
                        } else if self.depth == 1 && self.model_key {
                            self.value.clear();
                            Str::Model
                        } else {
                            Str::Other
                        };
                        self.state = State::Str { what, escape: false };
                    }
                    b'{' | b'[' => {
                        self.depth += 1;
                        self.model_key = false;
                    }
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            self.state = State::Done;
                        }
                    }
                    b',' if self.depth == 1 => {
                        self.expect_key = true;
                        self.model_key = false;
                    }
                    b':' if self.depth == 1 => self.expect_key = false,
                    b if !b.is_ascii_whitespace() && self.depth == 1 => self.model_key = false,
                    _ => {}
                },
                State::Str { what, escape } => {
                    if escape {
                        self.state = State::Str { what, escape: false };
                        self.push(what, if matches!(b, b'/' | b'\\' | b'"') { b } else { b'_' });
                    } else if b == b'\\' {
                        self.state = State::Str { what, escape: true };
                    } else if b == b'"' {
                        self.state = State::Scan;
                        match what {
                            Str::Key => self.model_key = self.key_len == 5 && &self.key[..5] == b"model",
                            Str::Model => {
                                self.model_key = false;
                                if !self.value.is_empty() {
                                    self.found = Some(std::mem::take(&mut self.value));
                                }
                                self.state = State::Done;
                            }
                            Str::Other => {}
                        }
                    } else {
                        self.push(what, b);
                    }
                }
            }
        }
    }

    fn push(&mut self, what: Str, b: u8) {
        match what {
            Str::Key => {
                if self.key_len < self.key.len() {
                    self.key[self.key_len] = b;
                }
                self.key_len = self.key_len.saturating_add(1);
            }
            Str::Model => {
                if self.value.len() < MAX_MODEL {
                    let ok = b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-');
                    self.value.push(if ok { b as char } else { '_' });
                }
            }
            Str::Other => {}
        }
    }
}

/// Bounds the model label of one target: the first `max` distinct names are kept, later ones
/// are `other` (and counted by the caller); a missing name is `unknown` and never takes a slot.
#[derive(Debug, Clone)]
pub struct ModelCap {
    seen: HashSet<String>,
    max: usize,
}

impl ModelCap {
    pub fn new(max: usize) -> Self {
        Self { seen: HashSet::new(), max }
    }

    /// The label for `model`, and whether it was folded into `other`.
    pub fn label(&mut self, model: Option<&str>) -> (String, bool) {
        let Some(m) = model else { return (UNKNOWN.into(), false) };
        if self.seen.contains(m) {
            return (m.into(), false);
        }
        if self.seen.len() < self.max {
            self.seen.insert(m.into());
            return (m.into(), false);
        }
        (OTHER.into(), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Option<String> {
        ModelScan::of(s.as_bytes())
    }

    #[test]
    fn top_level_model_only() {
        assert_eq!(m(r#"{"model":"llama-3.1-8b","messages":[]}"#).as_deref(), Some("llama-3.1-8b"));
        assert_eq!(
            m(r#"{"messages":[{"role":"user","content":"{\"model\":\"x\"}"}],"stream":true, "model" : "qwen2:7b"}"#)
                .as_deref(),
            Some("qwen2:7b"),
            "after the messages, and not the one quoted inside the prompt"
        );
        assert_eq!(m(r#"{"meta":{"model":"nested"},"model":"top"}"#).as_deref(), Some("top"));
        assert_eq!(m(r#"{"x":"model","y":1}"#), None, "a value that says model is not the key");
        assert_eq!(m(r#"{"models":"a","model_name":"b"}"#), None);
        assert_eq!(m(r#"{"model":7}"#), None);
        assert_eq!(m(r#"{"model":""}"#), None);
        assert_eq!(m(r#"[{"model":"a"}]"#), None, "not an object");
        assert_eq!(m("model=a"), None);
    }

    #[test]
    fn sanitized_and_bounded() {
        assert_eq!(m(r#"{"model":"meta-llama\/Llama-3 8B"}"#).as_deref(), Some("meta-llama/Llama-3_8B"));
        assert_eq!(m(r#"{"model":"a\"b\nc{}"}"#).as_deref(), Some("a_b_c__"));
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(500));
        assert_eq!(m(&long).map(|s| s.len()), Some(MAX_MODEL));
        assert_eq!(m("{\"model\":\"caf\u{e9}\"}").as_deref(), Some("caf__"), "non-ASCII bytes become _");
    }

    #[test]
    fn split_at_every_offset() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"model\": \"no\""}],"model":"gpt-4o-mini","n":1}"#;
        for cut in 0..=body.len() {
            let mut s = ModelScan::default();
            s.feed(&body[..cut]);
            s.feed(&body[cut..]);
            assert_eq!(s.take().as_deref(), Some("gpt-4o-mini"), "cut at {cut}");
        }
        // The bytes holding the field were not captured: nothing is guessed.
        let mut s = ModelScan::default();
        s.feed(&body[..20]);
        s.lose();
        s.feed(&body[20..]);
        assert_eq!(s.take(), None);
    }

    #[test]
    fn cap_folds_past_max_and_unknown_takes_no_slot() {
        let mut cap = ModelCap::new(2);
        assert_eq!(cap.label(None), (UNKNOWN.to_string(), false));
        assert_eq!(cap.label(Some("a")), ("a".to_string(), false));
        assert_eq!(cap.label(Some("b")), ("b".to_string(), false));
        assert_eq!(cap.label(Some("c")), (OTHER.to_string(), true));
        assert_eq!(cap.label(Some("a")), ("a".to_string(), false));
        assert_eq!(cap.label(None), (UNKNOWN.to_string(), false));
    }
}
