//! From what a user types (`llama_decode`, `ns::tokenize`, `*::tokenize`, `llama_*`) to the
//! functions to put uprobes on.

use std::path::PathBuf;

use super::demangle::base_name;
use super::{ElfSymbols, Symbol, SymbolError};

const MAX_SUGGESTIONS: usize = 5;

/// One function a spec resolved to, with everything needed to attach a uprobe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolMatch {
    pub path: PathBuf,
    /// As stored in the symbol table (mangled for Rust/C++).
    pub name: String,
    pub demangled: String,
    pub vaddr: u64,
    pub size: u64,
    /// What `perf_event_open`/aya's uprobe attach wants as the offset into `path`.
    pub file_offset: u64,
}

/// Every function in `elf` that `spec` names, one per address (aliases such as `malloc` and
/// `__libc_malloc` would otherwise get two probes on one instruction and double-count).
///
/// Without `*`/`?` the spec must equal the raw name, the demangled name, or the demangled name
/// without its C++ parameter list (`ns::tokenize` finds every `ns::tokenize(…)` overload). With
/// wildcards it is a case-sensitive glob over the same three forms.
pub fn resolve(elf: &ElfSymbols, spec: &str) -> Result<Vec<SymbolMatch>, SymbolError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(SymbolError::EmptySpec);
    }
    if elf.symbols().is_empty() {
        return Err(SymbolError::NoSymbols { path: elf.path().to_path_buf() });
    }
    let is_glob = spec.contains(['*', '?']);
    let matches_spec = |s: &Symbol| {
        let demangled = s.demangled();
        let forms = [s.name(), demangled, base_name(demangled)];
        if is_glob {
            forms.iter().any(|f| glob_match(spec, f))
        } else {
            forms.contains(&spec)
        }
    };

    let mut found: Vec<SymbolMatch> = Vec::new();
    let mut named_but_unloadable = false;
    for sym in elf.symbols().iter().filter(|s| matches_spec(s)) {
        // Symbols are sorted by address, so aliases are adjacent.
        if found.last().is_some_and(|m| m.vaddr == sym.vaddr()) {
            continue;
        }
        let Some(file_offset) = elf.file_offset(sym.vaddr()) else {
            named_but_unloadable = true;
            continue;
        };
        found.push(SymbolMatch {
            path: elf.path().to_path_buf(),
            name: sym.name().to_string(),
            demangled: sym.demangled().to_string(),
            vaddr: sym.vaddr(),
            size: sym.size(),
            file_offset,
        });
    }
    if !found.is_empty() {
        return Ok(found);
    }
    if named_but_unloadable {
        return Err(SymbolError::NotLoadable { spec: spec.to_string(), path: elf.path().to_path_buf() });
    }
    Err(SymbolError::SymbolNotFound {
        spec: spec.to_string(),
        path: elf.path().to_path_buf(),
        suggestions: suggest(elf, spec),
        stripped: !elf.has_symtab(),
    })
}

/// Glob with `*` (any run, including empty) and `?` (one character), case-sensitive.
/// Iterative with single-star backtracking: linear for the patterns people type.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(b'?') => {
                pi += 1;
                ti += utf8_width(t[ti]);
            }
            Some(&c) if c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the last star swallow one more character and retry from there.
                Some((sp, st)) => {
                    let next = st + utf8_width(t[st]);
                    star = Some((sp, next));
                    pi = sp + 1;
                    ti = next;
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

fn utf8_width(lead: u8) -> usize {
    match lead {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// Up to five names close to `spec`: small edit distance (case-insensitive) first, then names
/// that contain it (or that it contains). Good enough for typos (`llama_decod`), a missing
/// namespace (`tokenize` → `ns::tokenize`) and a wrong one.
fn suggest(elf: &ElfSymbols, spec: &str) -> Vec<String> {
    let needle: String = spec.chars().filter(|c| *c != '*' && *c != '?').collect();
    if needle.is_empty() {
        return Vec::new();
    }
    let needle_tail = last_component(&needle);
    let bound = |s: &str| (s.len() / 4).clamp(1, 4);
    let (max_full, max_tail) = (bound(&needle), bound(needle_tail));

    // (tier, closeness, length, name): lower sorts first. Tiers: the whole name is a near miss;
    // the last `::` component is (wrong or missing namespace); a substring relation.
    let mut scored: Vec<(u8, usize, usize, &str)> = Vec::new();
    for sym in elf.symbols() {
        let shown = base_name(sym.demangled());
        let mut best: Option<(u8, usize)> = None;
        for candidate in [shown, sym.name()] {
            let score = if let Some(d) = bounded_distance(&needle, candidate, max_full) {
                Some((0, d))
            } else if let Some(d) = bounded_distance(needle_tail, last_component(candidate), max_tail) {
                Some((1, d))
            } else if contains_ignore_case(candidate, &needle)
                || (candidate.len() >= 4 && contains_ignore_case(&needle, candidate))
            {
                Some((2, candidate.len().abs_diff(needle.len())))
            } else {
                None
            };
            best = match (best, score) {
                (Some(b), Some(s)) => Some(b.min(s)),
                (b, s) => b.or(s),
            };
        }
        if let Some((tier, closeness)) = best {
            scored.push((tier, closeness, shown.len(), shown));
        }
    }
    scored.sort_unstable();
    let mut out: Vec<String> = Vec::new();
    for (_, _, _, name) in scored {
        if !out.iter().any(|o| o == name) {
            out.push(name.to_string());
            if out.len() == MAX_SUGGESTIONS {
                break;
            }
        }
    }
    out
}

fn last_component(name: &str) -> &str {
    name.rsplit("::").next().unwrap_or(name)
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    !n.is_empty() && h.len() >= n.len() && h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// Levenshtein distance over ASCII-case-folded bytes, or None once it must exceed `max`
/// (cheap rejection: most symbols fail the length test without any work).
fn bounded_distance(a: &str, b: &str, max: usize) -> Option<usize> {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > max {
        return None;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0usize; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        let mut row_min = cur[0];
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(!ca.eq_ignore_ascii_case(&cb));
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            row_min = row_min.min(cur[j + 1]);
        }
        if row_min > max {
            return None;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    let d = prev[b.len()];
    (d <= max).then_some(d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::symbols::testutil::{Fixture, FixtureKind};

    #[test]
    fn glob_semantics() {
        assert!(glob_match("llama_*", "llama_decode"));
        assert!(glob_match("*::tokenize", "ns::tokenize"));
        assert!(!glob_match("*::tokenize", "ns::tokenize_all"));
        assert!(glob_match("llama_?ecode", "llama_decode"));
        assert!(!glob_match("llama_?ecode", "llama_ecode"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYbc"));
        assert!(!glob_match("a*b*c", "aXXbYYb"));
        assert!(!glob_match("Llama_*", "llama_decode"), "case-sensitive");
        assert!(glob_match("caf?", "café"), "? is one character, not one byte");
        assert!(glob_match("**x", "abx"));
    }

    #[test]
    fn bounded_distance_rejects_early() {
        assert_eq!(bounded_distance("llama_decod", "llama_decode", 2), Some(1));
        assert_eq!(bounded_distance("LLAMA_decode", "llama_decode", 2), Some(0));
        assert_eq!(bounded_distance("abc", "xyzabc", 2), None);
        assert_eq!(bounded_distance("kitten", "sitting", 3), Some(3));
    }

    #[test]
    fn exact_names_and_globs_in_a_c_binary() {
        let fx = Fixture::build(FixtureKind::Pie);
        let elf = ElfSymbols::load(&fx.path).unwrap();

        let m = resolve(&elf, "llama_decode").unwrap();
        assert_eq!(m.len(), 1);
        let (vaddr, size) = fx.readelf_symbol("llama_decode").unwrap();
        assert_eq!((m[0].vaddr, m[0].size), (vaddr, size));
        assert_eq!(m[0].file_offset, fx.readelf_file_offset(vaddr));
        assert_eq!(m[0].path, fx.path);

        let mut names: Vec<String> = resolve(&elf, "llama_*").unwrap().into_iter().map(|m| m.name).collect();
        names.sort();
        assert_eq!(names, ["llama_decode", "llama_encode", "llama_tokenize"]);
        assert_eq!(resolve(&elf, "llama_?ncode").unwrap()[0].name, "llama_encode");
    }

    #[test]
    fn typo_gets_near_matches() {
        let fx = Fixture::build(FixtureKind::Pie);
        let elf = ElfSymbols::load(&fx.path).unwrap();
        let err = resolve(&elf, "llama_decod").unwrap_err();
        let SymbolError::SymbolNotFound { suggestions, .. } = &err else { panic!("{err}") };
        assert_eq!(suggestions.first().map(String::as_str), Some("llama_decode"), "{suggestions:?}");
        assert!(suggestions.len() <= MAX_SUGGESTIONS);
        assert!(err.to_string().contains("did you mean: llama_decode"), "{err}");

        let err = resolve(&elf, "decode").unwrap_err();
        let SymbolError::SymbolNotFound { suggestions, .. } = &err else { panic!("{err}") };
        assert!(suggestions.iter().any(|s| s == "llama_decode"), "substring: {suggestions:?}");

        let err = resolve(&elf, "nothing_like_it_at_all_xyz").unwrap_err();
        assert!(matches!(&err, SymbolError::SymbolNotFound { suggestions, .. } if suggestions.is_empty()), "{err}");
        assert!(matches!(resolve(&elf, "  "), Err(SymbolError::EmptySpec)));
    }

    #[test]
    fn stripped_executable_is_a_clear_error() {
        let fx = Fixture::build(FixtureKind::StrippedPie);
        let elf = ElfSymbols::load(&fx.path).unwrap();
        let err = resolve(&elf, "llama_decode").unwrap_err();
        assert!(matches!(err, SymbolError::NoSymbols { .. }), "{err}");
        assert!(err.to_string().contains("stripped"), "{err}");
    }

    #[test]
    fn stripped_shared_library_resolves_exports_and_says_why_statics_are_missing() {
        let fx = Fixture::build(FixtureKind::StrippedShared);
        let elf = ElfSymbols::load(&fx.path).unwrap();
        let m = resolve(&elf, "llama_decode").unwrap();
        let (_, dynsym_vaddr) = fx.nm_dynamic_functions().into_iter().find(|(n, _)| n == "llama_decode").unwrap();
        assert_eq!(m[0].vaddr, dynsym_vaddr);
        let err = resolve(&elf, "helper_static").unwrap_err();
        assert!(err.to_string().contains("stripped"), "{err}");
    }

    #[test]
    fn cpp_names_match_with_and_without_parameters() {
        let fx = Fixture::build(FixtureKind::Cpp);
        let elf = ElfSymbols::load(&fx.path).unwrap();
        for spec in ["ns::tokenize", "*::tokenize", "ns::tokenize*", "ns::tokenize(int)", "_ZN2ns8tokenizeEi"] {
            let m = resolve(&elf, spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(m.len(), 1, "{spec}: {m:?}");
            assert_eq!(m[0].demangled, "ns::tokenize(int)");
            assert_eq!(m[0].name, "_ZN2ns8tokenizeEi");
        }
        let methods = resolve(&elf, "ns::Tokenizer::*").unwrap();
        assert!(methods.iter().any(|m| m.demangled == "ns::Tokenizer::count(char const*) const"), "{methods:?}");
        let err = resolve(&elf, "tokenise").unwrap_err();
        assert!(err.to_string().contains("ns::tokenize"), "{err}");
    }

    #[test]
    fn rust_names_match_by_demangled_path() {
        let exe = std::env::current_exe().unwrap();
        let elf = ElfSymbols::load(&exe).unwrap();
        let m = resolve(&elf, "*::marker_function_for_symbols_test").unwrap();
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].demangled.ends_with("symbols::testutil::marker_function_for_symbols_test"), "{m:?}");
        assert!(m[0].name.starts_with("_ZN") || m[0].name.starts_with("_R"), "mangled: {}", m[0].name);
        assert!(!m[0].demangled.contains("::h"), "hash dropped: {}", m[0].demangled);
        // The function pointer and the symbol agree once the load bias is removed.
        assert!(crate::symbols::testutil::marker_function_for_symbols_test() > 0);
    }
}
