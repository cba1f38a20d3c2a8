//! Symbol demangling (Rust legacy and v0, Itanium C++) and the C++ "base name" used to match
//! `ns::tokenize` against `ns::tokenize(int) const`.

/// The demangled form of `raw`, or None when it is not mangled (or demangling changes nothing).
pub(super) fn demangle(raw: &str) -> Option<String> {
    // Rust first: legacy Rust names are also valid-looking `_ZN…E` Itanium names, and only
    // rustc-demangle knows to drop the `::h0123…` hash (that is what `{:#}` does).
    if raw.starts_with("_R") || raw.starts_with("_ZN") {
        if let Ok(d) = rustc_demangle::try_demangle(raw) {
            let text = format!("{d:#}");
            return (text != raw).then_some(text);
        }
    }
    if raw.starts_with("_Z") {
        let sym = cpp_demangle::Symbol::new(raw.as_bytes()).ok()?;
        let text = sym.demangle().ok()?;
        return (text != raw).then_some(text);
    }
    None
}

/// `ns::Foo::bar(int) const [clone .cold]` → `ns::Foo::bar`: what a user types for a C++
/// function. Names without a trailing parameter list (C, Rust) come back unchanged.
pub(super) fn base_name(demangled: &str) -> &str {
    let mut s = demangled.trim_end();
    // GCC clones: `f(int) [clone .constprop.0] [clone .isra.0]`.
    while let Some(rest) = s.strip_suffix(']') {
        match rest.rfind(" [clone ") {
            Some(i) => s = rest[..i].trim_end(),
            None => break,
        }
    }
    loop {
        let before = s;
        for qualifier in [" const", " volatile", " &&", " &", " noexcept"] {
            if let Some(rest) = s.strip_suffix(qualifier) {
                s = rest;
            }
        }
        if s == before {
            break;
        }
    }
    let Some(inner) = s.strip_suffix(')') else { return demangled };
    let mut depth = 1usize;
    for (i, b) in inner.bytes().enumerate().rev() {
        match b {
            b')' => depth += 1,
            b'(' => {
                depth -= 1;
                if depth == 0 {
                    let mut head = &inner[..i];
                    // `getName[abi:cxx11]()`: ABI tags are not part of what anyone types.
                    while let Some(tag) = head.strip_suffix(']').and_then(|h| h.rfind("[abi:")) {
                        head = &head[..tag];
                    }
                    // `ns::operator()(int)`: the parameter list follows `operator()`, which
                    // must itself stay.
                    return if head.is_empty() { demangled } else { head };
                }
            }
            _ => {}
        }
    }
    demangled
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rust_legacy_and_v0_lose_the_hash() {
        assert_eq!(demangle("_ZN3foo3bar17h0123456789abcdefE").as_deref(), Some("foo::bar"));
        assert_eq!(demangle("_RNvCs1234_7mycrate4main").as_deref(), Some("mycrate::main"));
    }

    #[test]
    fn cpp_keeps_parameters_and_c_is_untouched() {
        assert_eq!(demangle("_ZN2ns8tokenizeEi").as_deref(), Some("ns::tokenize(int)"));
        assert_eq!(demangle("llama_decode"), None);
        assert_eq!(demangle("_Znotvalid"), None);
    }

    #[test]
    fn base_name_strips_cpp_parameter_lists_only() {
        assert_eq!(base_name("ns::tokenize(int)"), "ns::tokenize");
        assert_eq!(base_name("ns::Foo::bar(int, char const*) const"), "ns::Foo::bar");
        assert_eq!(base_name("f(int) [clone .constprop.0] [clone .isra.0]"), "f");
        assert_eq!(
            base_name("std::function<void (int)>::operator()(int) const"),
            "std::function<void (int)>::operator()"
        );
        assert_eq!(base_name("llama_decode"), "llama_decode");
        assert_eq!(base_name("core::ptr::drop_in_place<()>"), "core::ptr::drop_in_place<()>");
        assert_eq!(base_name("(anonymous namespace)::f(int)"), "(anonymous namespace)::f");
        assert_eq!(base_name("llvm::SCC::getName[abi:cxx11]() const"), "llvm::SCC::getName");
    }
}
