//! Stage latency against the real kernel: uprobes on C targets built PIE, non-PIE, stripped with
//! `.dynsym` kept, with the functions in a shared library, and with a library dlopen'ed after
//! attach; a Rust target matched by demangled globs; errors that must be clear and leave no probe.
//! The targets record their own truth (calls, in-body durations, the probe's own cost).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::*;

fn cc(args: &[&str]) {
    let st = Command::new("cc").args(args).status().expect("cc");
    assert!(st.success(), "cc {args:?} failed");
}

/// Builds every variant once per test process.
fn targets() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let src = workspace_root().join("tests/targets");
        let dir = scratch_dir("stage-targets");
        let s = |f: &str| src.join(f).display().to_string();
        let o = |f: &str| dir.join(f).display().to_string();
        let common = ["-O2", "-g", "-pthread"];
        cc(&[&common[..], &["-fPIE", "-pie", "-o", &o("pie"), &s("stages.c"), &s("stagefns.c"), "-ldl"]].concat());
        cc(&[&common[..], &["-fno-pie", "-no-pie", "-o", &o("nopie"), &s("stages.c"), &s("stagefns.c"), "-ldl"]]
            .concat());
        // Exported (-rdynamic) so .dynsym keeps them once .symtab is stripped.
        cc(&[
            &common[..],
            &["-fPIE", "-pie", "-rdynamic", "-o", &o("stripped"), &s("stages.c"), &s("stagefns.c"), "-ldl"],
        ]
        .concat());
        assert!(Command::new("strip").args(["--strip-all", &o("stripped")]).status().unwrap().success());
        // Nothing exported and stripped: no symbols at all.
        cc(&[&common[..], &["-fPIE", "-pie", "-o", &o("bare"), &s("stages.c"), &s("stagefns.c"), "-ldl"]].concat());
        assert!(Command::new("strip").args(["--strip-all", &o("bare")]).status().unwrap().success());
        cc(&["-O2", "-g", "-shared", "-fPIC", "-o", &o("libstagefns.so"), &s("stagefns.c")]);
        cc(&[
            &common[..],
            &[
                "-o",
                &o("withlib"),
                &s("stages.c"),
                "-L",
                &o(""),
                "-lstagefns",
                &format!("-Wl,-rpath,{}", o("")),
                "-ldl",
            ],
        ]
        .concat());
        cc(&["-O2", "-g", "-shared", "-fPIC", "-o", &o("libplugin.so"), &s("plugin.c")]);
        dir
    })
    .clone()
}

struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
}

impl Target {
    fn start(exe: &Path, args: &[&str]) -> Target {
        let mut child = Command::new(exe).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let line = read_line(&mut stdout);
        let pid = line.strip_prefix("READY ").unwrap_or_else(|| panic!("target said {line:?}")).parse().unwrap();
        Target { child, stdin, stdout, pid }
    }
    fn send(&mut self) {
        writeln!(self.stdin).unwrap();
        self.stdin.flush().unwrap();
    }
    fn expect(&mut self, what: &str) -> String {
        let line = read_line(&mut self.stdout);
        assert!(line.starts_with(what), "expected {what}, got {line:?}");
        line
    }
    fn truth(&mut self) -> serde_json::Value {
        serde_json::from_str(&read_line(&mut self.stdout)).unwrap()
    }
    fn finish(mut self) {
        self.send();
        self.child.wait().unwrap();
    }
    /// Lets a target that was never measured run through its protocol and exit.
    fn run_out(mut self) {
        self.send();
        let _ = self.truth();
        self.finish();
    }
}

fn read_line(r: &mut impl BufRead) -> String {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    s.trim().to_string()
}

fn stage<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {}", report["stages"]))
}

fn uprobe_events() -> String {
    std::fs::read_to_string("/sys/kernel/tracing/uprobe_events").unwrap_or_default()
}

/// Runs the standard workload under the agent and checks counts, means and self time.
fn check_variant(exe: &str, stage_args: &[&str]) {
    let _serial = require_root();
    let dir = targets();
    let before = uprobe_events();
    let (threads, iters, spin) = (2, 150, 200);
    let mut t = Target::start(&dir.join(exe), &[&threads.to_string(), &iters.to_string(), &spin.to_string()]);
    let mut args = vec![];
    for s in stage_args {
        args.extend(["--stage", s]);
    }
    let json = dir.join(format!("{exe}-report.json"));
    let agent = Agent::attach(t.pid, &json, &args);
    t.send();
    let truth = t.truth();
    t.finish();
    let report = agent.wait_report();
    assert_eq!(report["summary"]["ended_by"], "target exited");

    let cost_ns = (truth["empty_probed_ns"].as_f64().unwrap() - truth["empty_unprobed_ns"].as_f64().unwrap()).max(0.0);
    eprintln!("{exe}: probe cost per entry+return pair {cost_ns:.0} ns; truth {truth}");
    let (outer, inner, rec, empty) =
        (stage(&report, "outer"), stage(&report, "inner"), stage(&report, "rec"), stage(&report, "empty"));
    assert_eq!(outer["count"], truth["outer_calls"]);
    assert_eq!(inner["count"], truth["inner_calls"]);
    assert_eq!(rec["count"], truth["recurse_calls"], "every recursive call is timed");
    assert_eq!(rec["count"].as_u64().unwrap(), 4 * threads * iters);
    assert_eq!(empty["count"].as_u64().unwrap(), 100_000);
    let tol = |nested: f64| 5e-6 + (1.0 + nested) * cost_ns / 1e9;
    let close = |got: &serde_json::Value, truth_ns: &serde_json::Value, nested: f64, what: &str| {
        let (a, b) = (got["mean_s"].as_f64().unwrap(), truth_ns.as_f64().unwrap() / 1e9);
        assert!((a - b).abs() <= tol(nested), "{exe} {what}: mean {a} vs truth {b} (tolerance {})", tol(nested));
    };
    close(inner, &truth["inner_mean_ns"], 0.0, "inner");
    close(outer, &truth["outer_mean_ns"], 2.0, "outer");
    // Self time: outer minus the inner calls nested in it.
    let outer_self = outer["self_s"].as_f64().unwrap();
    let expect_self = outer["total_s"].as_f64().unwrap() - inner["total_s"].as_f64().unwrap();
    assert!(
        (outer_self - expect_self).abs() <= 1e-3 * outer["total_s"].as_f64().unwrap() + 1e-4,
        "{outer_self} vs {expect_self}"
    );
    // Recursion: each level's self time is about one spin; the outermost call's total is four.
    assert!(rec["self_s"].as_f64().unwrap() < rec["total_s"].as_f64().unwrap());
    assert_eq!(uprobe_events(), before, "no uprobe left behind");
}

const PLAIN: &[&str] = &["outer=stage_outer", "inner=stage_inner", "rec=stage_recurse", "empty=stage_empty"];

#[test]
fn pie_executable() {
    check_variant("pie", PLAIN);
}

#[test]
fn non_pie_executable() {
    check_variant("nopie", PLAIN);
}

#[test]
fn stripped_executable_with_dynsym() {
    check_variant("stripped", PLAIN);
}

#[test]
fn functions_in_a_shared_library() {
    check_variant(
        "withlib",
        &[
            "outer=libstagefns.so:stage_outer",
            "inner=libstagefns.so:stage_inner",
            "rec=libstagefns.so:stage_recurse",
            "empty=libstagefns.so:stage_empty",
        ],
    );
}

#[test]
fn library_dlopened_after_attach_gets_its_probes() {
    let _serial = require_root();
    let dir = targets();
    let lib = dir.join("libplugin.so").display().to_string();
    let mut t = Target::start(&dir.join("pie"), &["1", "50", "100", &lib]);
    let json = dir.join("dlopen-report.json");
    let agent =
        Agent::attach(t.pid, &json, &["--stage", "plugin=libplugin.so:plugin_work", "--stage", "outer=stage_outer"]);
    t.send();
    t.expect("LOADED");
    std::thread::sleep(Duration::from_millis(2500)); // the agent rescans mappings every second
    t.send();
    let truth = t.truth();
    t.finish();
    let report = agent.wait_report();
    assert_eq!(stage(&report, "plugin")["count"], truth["plugin_calls"]);
    assert_eq!(truth["plugin_calls"], 50);
    assert_eq!(stage(&report, "outer")["count"], 50);
}

#[test]
fn rust_functions_by_demangled_glob() {
    let _serial = require_root();
    let exe = workspace_root().join("target/release/stage-target-rs");
    let mut t = Target::start(&exe, &["100"]);
    let json = scratch_dir("rust-stages").join("report.json");
    let agent =
        Agent::attach(t.pid, &json, &["--stage", "tokenize=*::pipeline::tokenize", "--stage", "decode=*::decode_step"]);
    t.send();
    let truth = t.truth();
    t.finish();
    let report = agent.wait_report();
    assert_eq!(stage(&report, "tokenize")["count"], truth["tokenize_calls"]);
    assert_eq!(stage(&report, "decode")["count"], truth["decode_step_calls"]);
    let mean = stage(&report, "tokenize")["mean_s"].as_f64().unwrap();
    let truth_mean = truth["tokenize_mean_ns"].as_f64().unwrap() / 1e9;
    // 5 µs plus one probe pair's own cost (about 13 µs on this VM, measured by the C tests).
    assert!((mean - truth_mean).abs() <= 5e-6 + 20e-6, "tokenize mean {mean} vs truth {truth_mean}");
}

fn agent_error(pid: u32, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_inferscope"))
        .args(["attach", "--pid", &pid.to_string(), "--quiet", "--duration", "5"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "expected failure, got success: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn missing_symbol_stripped_binary_and_vanishing_pid_are_clear_errors() {
    let _serial = require_root();
    let dir = targets();
    let before = uprobe_events();
    let t = Target::start(&dir.join("pie"), &["1", "1", "1"]);
    let err = agent_error(t.pid, &["--stage", "outer=stage_outer", "--stage", "x=stage_outre"]);
    assert!(err.contains("no function matching `stage_outre`") && err.contains("did you mean: stage_outer"), "{err}");
    let err = agent_error(t.pid, &["--stage", "x=libstagefns_missing.so:f", "--stage", "y=libc.so.6:no_such_fn"]);
    assert!(err.contains("no function matching `no_such_fn`"), "{err}");
    let err = agent_error(t.pid, &["--stage", "x=bad spec"]);
    assert!(err.contains("x"), "{err}");
    let err = agent_error(t.pid, &["--profile", "nonexistent"]);
    assert!(err.contains("unknown profile"), "{err}");
    t.run_out();

    let bare = Target::start(&dir.join("bare"), &["1", "1", "1"]);
    let err = agent_error(bare.pid, &["--stage", "outer=stage_outer"]);
    assert!(err.contains("no function matching `stage_outer`") && err.contains("stripped"), "{err}");
    bare.run_out();

    // A process that is gone by the time the agent looks.
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let err = agent_error(pid, &["--stage", "outer=stage_outer"]);
    assert!(err.contains("no such process"), "{err}");
    assert_eq!(uprobe_events(), before, "no uprobe left behind by failed attaches");
}
