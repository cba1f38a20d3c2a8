//! Classifies one streamed event's payload: does it carry generated content, and does it state
//! the completion token count? The payload is scanned, never copied or kept.
//!
//! Shapes this knows (all JSON): OpenAI chat (`delta.content`, `delta.reasoning_content`,
//! `delta.tool_calls[].function.arguments`) and completions (`choices[].text`), llama.cpp native
//! (`content`, final `timings.predicted_n` / `tokens_predicted`), TGI (`token.text`,
//! `details.generated_tokens`), Anthropic (`delta.text`, `delta.partial_json`, `usage.output_tokens`),
//! Ollama NDJSON (`message.content`, `response`, final `eval_count`). A non-JSON payload counts as
//! content when it is not empty and not `[DONE]`.

/// Keys whose non-empty string value is generated output.
const CONTENT_KEYS: &[&[u8]] =
    &[b"content", b"text", b"reasoning_content", b"reasoning", b"thinking", b"arguments", b"partial_json", b"response"];

/// Keys whose integer value is the completion token count so far (last one wins).
const TOKEN_KEYS: &[&[u8]] =
    &[b"completion_tokens", b"predicted_n", b"tokens_predicted", b"generated_tokens", b"eval_count", b"output_tokens"];

/// Longest key we compare; longer keys match nothing.
const MAX_KEY: usize = 32;

/// Keys whose non-null string value marks the stream's last event (OpenAI `finish_reason`, TGI's
/// final `generated_text`).
const TERMINAL_STRING_KEYS: &[&[u8]] = &[b"finish_reason", b"generated_text", b"stop_reason"];
/// Keys whose `true` marks the last event (llama.cpp `stop`, Ollama `done`).
const TERMINAL_TRUE_KEYS: &[&[u8]] = &[b"stop", b"done"];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Classification {
    pub content: bool,
    pub tokens: Option<u64>,
    /// The stream says it is complete here (`[DONE]`, a finish reason, `"stop":true`,
    /// `"done":true`, Anthropic's `message_stop`): whatever the transport does next, the user
    /// got the whole answer.
    pub terminal: bool,
}

pub fn classify(payload: &[u8]) -> Classification {
    let trimmed = trim(payload);
    if trimmed == b"[DONE]" {
        return Classification { terminal: true, ..Classification::default() };
    }
    if trimmed.is_empty() {
        return Classification::default();
    }
    if trimmed[0] != b'{' && trimmed[0] != b'[' {
        return Classification { content: true, ..Classification::default() };
    }
    scan_json(trimmed)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// A forgiving single-pass JSON scan: it tracks only "the key just read", so truncated or
/// slightly malformed JSON still yields what it contains instead of failing.
fn scan_json(s: &[u8]) -> Classification {
    let mut out = Classification::default();
    // The pending key's raw bytes; `None`: no key pending, or one that matches nothing (longer
    // than `MAX_KEY` or escaped).
    let mut key: Option<&[u8]> = None;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => {
                let (end, len, raw) = read_string(s, i + 1);
                i = end;
                // A string followed by ':' is a key; otherwise it is a value of the pending key.
                let mut j = i;
                while j < s.len() && s[j].is_ascii_whitespace() {
                    j += 1;
                }
                if j < s.len() && s[j] == b':' {
                    key = raw;
                    i = j + 1;
                    continue;
                }
                if let Some(k) = key {
                    if len > 0 && CONTENT_KEYS.contains(&k) {
                        out.content = true;
                    }
                    if TERMINAL_STRING_KEYS.contains(&k) || (k == b"type" && raw == Some(b"message_stop")) {
                        out.terminal = true;
                    }
                }
                key = None;
            }
            b'0'..=b'9' => {
                let mut v: u64 = 0;
                let mut overflow = false;
                while i < s.len() && s[i].is_ascii_digit() {
                    match v.checked_mul(10).and_then(|v| v.checked_add((s[i] - b'0') as u64)) {
                        Some(n) => v = n,
                        None => overflow = true,
                    }
                    i += 1;
                }
                let integral = !(i < s.len() && (s[i] == b'.' || s[i] == b'e' || s[i] == b'E'));
                if integral && !overflow && key.is_some_and(|k| TOKEN_KEYS.contains(&k)) {
                    out.tokens = Some(v);
                }
                key = None;
            }
            b't' if s[i..].starts_with(b"true") => {
                if key.is_some_and(|k| TERMINAL_TRUE_KEYS.contains(&k)) {
                    out.terminal = true;
                }
                key = None;
                i += 4;
            }
            b'{' | b'[' | b',' => {
                key = None; // structural: only a scalar right after a key is its value
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// Reads a JSON string starting at `start`, after its opening quote. Returns the index after the
/// closing quote (or the end of a cut payload), the decoded length in bytes (an escape counts
/// as one), and the raw bytes when they can be compared with a key: closed, unescaped and at
/// most `MAX_KEY` long.
fn read_string(s: &[u8], start: usize) -> (usize, usize, Option<&[u8]>) {
    let mut i = start;
    let mut escapes = 0usize;
    while let Some(n) = quote_or_escape(&s[i..]) {
        i += n;
        if s[i] == b'"' {
            let raw = &s[start..i];
            let comparable = escapes == 0 && raw.len() <= MAX_KEY;
            return (i + 1, raw.len() - escapes, comparable.then_some(raw));
        }
        escapes += 1;
        i += 2; // the backslash and the escaped byte
        if i >= s.len() {
            return (s.len(), (s.len() - start).saturating_sub(escapes), None);
        }
    }
    (s.len(), s.len() - start - escapes, None)
}

/// The first `"` or `\` in `s`. Most strings are short keys: a plain loop over the first 16
/// bytes costs less than setting up the SIMD search, which takes the rest.
#[inline(always)]
fn quote_or_escape(s: &[u8]) -> Option<usize> {
    let head = s.len().min(16);
    if let Some(n) = s[..head].iter().position(|&c| c == b'"' || c == b'\\') {
        return Some(n);
    }
    memchr::memchr2(b'"', b'\\', &s[head..]).map(|n| n + head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Classification {
        classify(s.as_bytes())
    }

    #[test]
    fn long_strings_with_escapes_keep_the_scan_in_step() {
        // Values longer than the key prefix, with escaped quotes past it: the scan must land
        // on the right closing quote so the keys after them are still read.
        let v = format!(
            r#"{{"delta":{{"content":"{}\"quoted\" {}"}},"usage":{{"completion_tokens":7}},"finish_reason":"stop"}}"#,
            "x".repeat(40),
            "y".repeat(50)
        );
        assert_eq!(c(&v), Classification { content: true, tokens: Some(7), terminal: true });
        let k = format!(r#"{{"{}\"":"v","completion_tokens":3}}"#, "k".repeat(40));
        assert_eq!(c(&k), Classification { content: false, tokens: Some(3), terminal: false });
    }

    #[test]
    fn openai_chat_role_only_is_not_content() {
        let role = r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        assert!(!c(role).content);
        let role_null = r#"{"choices":[{"delta":{"role":"assistant","content":null}}]}"#;
        assert!(!c(role_null).content);
        let tok = r#"{"choices":[{"index":0,"delta":{"content":" Hello"}}]}"#;
        assert!(c(tok).content);
        let escaped = r#"{"choices":[{"delta":{"content":"\n"}}]}"#;
        assert!(c(escaped).content);
    }

    #[test]
    fn final_chunk_gives_tokens_without_content() {
        let fin = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":42,"total_tokens":47,"completion_tokens_details":{"reasoning_tokens":0}}}"#;
        assert_eq!(c(fin), Classification { content: false, tokens: Some(42), terminal: true });
    }

    #[test]
    fn llama_cpp_native_and_timings() {
        assert!(c(r#"{"content":"Hi","stop":false,"id_slot":0}"#).content);
        let last = r#"{"content":"","stop":true,"tokens_predicted":20,"timings":{"prompt_n":9,"predicted_n":20,"predicted_ms":140.5}}"#;
        assert_eq!(c(last), Classification { content: false, tokens: Some(20), terminal: true });
    }

    #[test]
    fn tool_calls_tgi_anthropic_ollama() {
        assert!(
            c(r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}]}"#).content
        );
        assert!(
            c(r#"{"index":1,"token":{"id":9,"text":"Hello","logprob":-0.1,"special":false},"generated_text":null}"#)
                .content
        );
        assert!(c(r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#).content);
        assert!(!c(r#"{"type":"message_start","message":{"content":[],"usage":{"output_tokens":1}}}"#).content);
        assert!(c(r#"{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}"#).content);
        assert_eq!(c(r#"{"model":"m","response":"","done":true,"eval_count":17}"#).tokens, Some(17));
    }

    #[test]
    fn terminal_events_of_each_shape() {
        assert!(c("[DONE]").terminal);
        assert!(!c(r#"{"choices":[{"delta":{"content":"x"},"finish_reason":null}]}"#).terminal);
        assert!(c(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#).terminal);
        assert!(!c(r#"{"content":"Hi","stop":false}"#).terminal);
        assert!(c(r#"{"model":"m","response":"","done":true,"eval_count":17}"#).terminal);
        assert!(!c(r#"{"model":"m","response":"a","done":false}"#).terminal);
        assert!(c(r#"{"type":"message_stop"}"#).terminal);
        assert!(!c(r#"{"type":"content_block_stop","index":0}"#).terminal);
        assert!(c(r#"{"token":{"text":"!"},"generated_text":"Hello!","details":null}"#).terminal);
        assert!(!c(r#"{"token":{"text":"H"},"generated_text":null}"#).terminal);
        assert!(!c(r#"{"content":"the word true"}"#).terminal);
    }

    #[test]
    fn done_comment_plain_text() {
        assert!(!c("[DONE]").content);
        assert!(!c("  ").content);
        assert!(c("hello").content);
    }

    #[test]
    fn truncated_json_still_classifies() {
        assert!(c(r#"{"choices":[{"delta":{"content":"abc"#).content);
        assert!(!c(r#"{"choices":[{"delta":{"role":"assis"#).content);
    }

    #[test]
    fn key_names_in_values_do_not_confuse() {
        assert!(!c(r#"{"object":"content","role":"text"}"#).content);
        assert!(!c(r#"{"x":"completion_tokens","n":5}"#).content);
        assert_eq!(c(r#"{"x":"completion_tokens","n":5}"#).tokens, None);
    }
}
