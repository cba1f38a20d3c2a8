//! Output that fits the terminal: its width (the window's, else `COLUMNS`, else 120 when the
//! output is not a terminal), and cutting lines to it — never wrapping, which breaks tables and
//! leaves a stale copy of a `\r`-refreshed status line behind per refresh.

/// Below this many columns the report switches to its narrow layout (fewer columns).
pub const NARROW: usize = 80;
/// The width assumed when the output is not a terminal and `COLUMNS` is not set.
pub const DEFAULT_WIDTH: usize = 120;

/// Columns of the terminal `fd` is, if it is one.
pub fn tty_width(fd: i32) -> Option<usize> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ fills the winsize we own; a non-terminal fd just fails.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some(ws.ws_col as usize)
}

/// The width for output on `fd`: the terminal's, else `COLUMNS`, else [`DEFAULT_WIDTH`].
pub fn width_of(fd: i32) -> usize {
    tty_width(fd)
        .or_else(|| std::env::var("COLUMNS").ok()?.trim().parse().ok().filter(|&c: &usize| c > 0))
        .unwrap_or(DEFAULT_WIDTH)
}

/// `line` cut to `width` characters, the cut marked with `…`.
pub fn fit_line(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut s: String = line.chars().take(width.saturating_sub(1)).collect();
    if width > 0 {
        s.push('…');
    }
    s
}

/// Every line of `text` cut to `width` characters.
pub fn fit(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, nl) = line.strip_suffix('\n').map_or((line, ""), |b| (b, "\n"));
        out.push_str(&fit_line(body, width));
        out.push_str(nl);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_never_wrapped() {
        assert_eq!(fit_line("abcdef", 4), "abc…");
        assert_eq!(fit_line("abc", 4), "abc");
        assert_eq!(fit_line("█████", 3), "██…", "characters, not bytes");
        assert_eq!(fit("ab\nabcdef\n\nx", 3), "ab\nab…\n\nx");
    }
}
