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
    let mut key = [0u8; MAX_KEY];
    let mut key_len: usize = usize::MAX; // usize::MAX: no key pending
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => {
                let (end, len, buf) = read_string(s, i + 1);
                i = end;
                // A string followed by ':' is a key; otherwise it is a value of the pending key.
                let mut j = i;
                while j < s.len() && s[j].is_ascii_whitespace() {
                    j += 1;
                }
                if j < s.len() && s[j] == b':' {
                    key = buf;
                    key_len = if len <= MAX_KEY { len } else { usize::MAX - 1 };
                    i = j + 1;
                    continue;
                }
                if key_len <= MAX_KEY {
                    let k = &key[..key_len];
                    if len > 0 && CONTENT_KEYS.contains(&k) {
                        out.content = true;
                    }
                    if TERMINAL_STRING_KEYS.contains(&k)
                        || (k == b"type" && &buf[..len.min(MAX_KEY)] == b"message_stop")
                    {
                        out.terminal = true;
                    }
                }
                key_len = usize::MAX;
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
                if integral && !overflow && key_len <= MAX_KEY && TOKEN_KEYS.contains(&&key[..key_len]) {
                    out.tokens = Some(v);
                }
                key_len = usize::MAX;
            }
            b't' if s[i..].starts_with(b"true") => {
                if key_len <= MAX_KEY && TERMINAL_TRUE_KEYS.contains(&&key[..key_len]) {
                    out.terminal = true;
                }
                key_len = usize::MAX;
                i += 4;
            }
            b'{' | b'[' | b',' => {
                key_len = usize::MAX; // structural: only a scalar right after a key is its value
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// Reads a JSON string starting after its opening quote. Returns the index after the closing
/// quote, the decoded length in bytes (escapes count as one), and the first `MAX_KEY` raw bytes.
fn read_string(s: &[u8], mut i: usize) -> (usize, usize, [u8; MAX_KEY]) {
    let mut buf = [0u8; MAX_KEY];
    let mut len = 0usize;
    while i < s.len() {
        match s[i] {
            b'"' => return (i + 1, len, buf),
            b'\\' => {
                i += 2;
                len += 1;
                continue;
            }
            b => {
                if len < MAX_KEY {
                    buf[len] = b;
                }
                len += 1;
                i += 1;
            }
        }
    }
    (i, len, buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Classification {
        classify(s.as_bytes())
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
