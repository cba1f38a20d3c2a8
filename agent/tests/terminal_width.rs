//! The report and the live status line fit the terminal they are shown on: the agent runs under
//! a real pseudo-terminal of 60, 80 and 120 columns (tests/clients/pty_run.py sets the window
//! size before it starts) while a server streams, and no line it draws, status line redraws
//! included, is wider than the terminal. Log lines (`[INFO  module] …`) are the logger's and
//! wrap like any program's; they are not drawn to the width. Needs root.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

/// The visible lines of terminal output: split at newlines and carriage returns (the status line
/// redraws itself with `\r`), escape sequences removed, widths in characters.
fn visible_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for raw in text.split(['\n', '\r']) {
        let mut line = String::new();
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                // CSI: ESC [ params final-byte (0x40..=0x7e).
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for d in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&d) {
                            break;
                        }
                    }
                }
                continue;
            }
            line.push(c);
        }
        lines.push(line);
    }
    lines
}

#[test]
fn report_and_status_line_fit_60_80_and_120_columns() {
    let _serial = require_root();
    let dir = scratch_dir("width");
    let server = Server::start(ServerKind::Rust, &dir);
    let script = workspace_root().join("tests/clients/pty_run.py");
    for cols in [60usize, 80, 120] {
        // Requests all the while the agent runs (attaching takes a while on a loaded machine).
        let (addr, stop) = (server.addr(), Arc::new(AtomicBool::new(false)));
        let load = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut errors = 0;
                while !stop.load(Ordering::Relaxed) {
                    let q = "tokens=20&interval_ms=10&prefill_ms=30";
                    errors += testbed::run_load(&addr, 4, 4, true, q, &format!("w{cols}-")).map_or(1, |s| s.errors);
                }
                errors
            })
        };
        let out = Command::new("python3")
            .arg(&script)
            .arg(cols.to_string())
            .arg(env!("CARGO_BIN_EXE_inferscope"))
            .args(["attach", "--pid", &server.pid().to_string(), "--duration", "3", "--waterfall-rows", "20"])
            .output()
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        assert_eq!(load.join().unwrap(), 0, "load errors");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cols} columns: agent failed:\n{text}");
        let is_log = |l: &str| ["[INFO ", "[WARN ", "[ERROR", "[DEBUG", "[TRACE"].iter().any(|p| l.starts_with(p));
        let lines: Vec<String> = visible_lines(&text).into_iter().filter(|l| !is_log(l)).collect();
        let widest = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        let over: Vec<&String> = lines.iter().filter(|l| l.chars().count() > cols).collect();
        eprintln!("{cols} columns: {} lines, widest {widest}", lines.len());
        assert!(over.is_empty(), "{cols} columns: {} lines wider than the terminal:\n{}", over.len(), text);
        // The report was drawn, waterfall included: the test checks what a person sees.
        assert!(text.contains("time to first token"), "{cols} columns: no report:\n{text}");
        let rows = lines.iter().filter(|l| l.contains('│')).count();
        assert!(text.contains("waterfall") && rows >= 4, "{cols} columns: {rows} waterfall rows:\n{text}");
    }
}
