//! CPU flamegraphs against the real kernel: a C fixture burning 70/30 in two named functions
//! (shares within 5 points, and Debian's `perf record` agrees on the top functions), a stripped
//! copy ([unknown] frames, no crash), a Rust fixture (demangled paths), Node with
//! --perf-basic-prof (JIT names from the perf map), and the prefill/decode phase split on a
//! streaming server that burns CPU in `prefill_work` before the first token and `decode_work`
//! between tokens; whole stacks without frame pointers (`.eh_frame` unwinding) on a C fixture
//! with two threads, a shared library, a dlopen'ed plugin and a recursion, on a C++ one alike
//! (shares against its own thread CPU clock and `perf record --call-graph dwarf`), and on the
//! Rust release fixture; off-CPU stacks with and without frame pointers; a row array too small
//! for libc (counted, walked by frame pointers). Needs root.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

fn build_burn(dir: &Path) -> (PathBuf, PathBuf) {
    let src = workspace_root().join("tests/targets/burn.c");
    let exe = dir.join("burn");
    let st =
        Command::new("cc").args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"]).arg(&exe).arg(&src).status().unwrap();
    assert!(st.success());
    let stripped = dir.join("burn-stripped");
    std::fs::copy(&exe, &stripped).unwrap();
    assert!(Command::new("strip").arg("--strip-all").arg(&stripped).status().unwrap().success());
    (exe, stripped)
}

fn read_folded(path: &Path) -> HashMap<String, u64> {
    parse_folded(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// Share of samples whose leaf (or, with `anywhere`, any frame) satisfies `pred`.
fn share(folded: &HashMap<String, u64>, pred: impl Fn(&str) -> bool) -> f64 {
    let total: u64 = folded.values().sum();
    let hit: u64 = folded.iter().filter(|(s, _)| s.split(';').any(&pred)).map(|(_, n)| n).sum();
    hit as f64 / total.max(1) as f64
}

fn profile(pid: u32, dir: &Path, seconds: &str, hz: &str) -> (serde_json::Value, HashMap<String, u64>) {
    let svg = dir.join("cpu.svg");
    let folded = dir.join("cpu.folded");
    let pprof = dir.join("cpu.pb.gz");
    let agent = Agent::attach(
        pid,
        &dir.join("report.json"),
        &[
            "--duration",
            seconds,
            "--frequency",
            hz,
            "--flamegraph",
            svg.to_str().unwrap(),
            "--folded",
            folded.to_str().unwrap(),
            "--pprof",
            pprof.to_str().unwrap(),
        ],
    );
    let report = agent.wait_report();
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<?xml") && svg_text.contains("<svg"), "an SVG flamegraph");
    (report, read_folded(&folded))
}

#[test]
fn c_fixture_shares_and_perf_agrees() {
    let _serial = require_root();
    let dir = scratch_dir("cpu-c");
    let (exe, _) = build_burn(&dir);
    let (mut child, pid) = start_ready(Command::new(&exe).args(["8", "70"]));
    // Debian's perf on the same process at the same time, for comparison.
    let perf_data = dir.join("perf.data");
    let mut perf = Command::new("perf")
        .args(["record", "-F", "99", "-g", "-e", "cpu-clock", "-p", &pid.to_string(), "-o"])
        .arg(&perf_data)
        .args(["--", "sleep", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf (linux-perf) is installed by cargo xtask setup");
    // 499 Hz: ~2000 samples, so our share is known to about one point.
    let (report, folded) = profile(pid, &dir, "4", "499");
    assert!(perf.wait().unwrap().success(), "perf record failed");
    child.kill().ok();
    child.wait().ok();

    // Inclusive share of each function, normalised over the two: samples taken inside libc's
    // clock call (no frame pointers, so its caller is hidden) fall evenly on both sides.
    let shares = |f: &HashMap<String, u64>| {
        let (a, b) = (share(f, |fr| fr == "burn_a"), share(f, |fr| fr == "burn_b"));
        (a / (a + b).max(1e-9), b / (a + b).max(1e-9))
    };
    let (a, b) = shares(&folded);
    eprintln!(
        "inferscope: burn_a {:.1}% burn_b {:.1}% of {} samples",
        a * 100.0,
        b * 100.0,
        folded.values().sum::<u64>()
    );
    assert!((a - 0.70).abs() <= 0.05, "burn_a share {a}");
    assert!((b - 0.30).abs() <= 0.05, "burn_b share {b}");
    assert!(folded.values().sum::<u64>() >= 1000, "about 499 Hz for 4 s");
    assert_eq!(report["cpu"]["truncated"], 0, "frame pointers: complete stacks");

    // perf script → inferno's perf collapser → same top functions.
    let script = Command::new("perf").arg("script").arg("-i").arg(&perf_data).output().unwrap();
    assert!(script.status.success());
    let mut out = Vec::new();
    use inferno::collapse::Collapse;
    inferno::collapse::perf::Folder::default().collapse(&script.stdout[..], &mut out).unwrap();
    let perf_folded = parse_folded(&String::from_utf8_lossy(&out));
    let (pa, pb) = shares(&perf_folded);
    eprintln!("perf:       burn_a {:.1}% burn_b {:.1}%", pa * 100.0, pb * 100.0);
    // Same top functions in the same order; shares within 10 points (perf's ~400 samples at
    // 99 Hz carry about ±2.3 points of sampling error each side, so 10 is about 3 sigma).
    assert!(pa > pb && a > b, "same order: perf {pa}/{pb} ours {a}/{b}");
    assert!((a - pa).abs() <= 0.10, "perf {pa}/{pb} vs ours {a}/{b}");

    // The same run's pprof file, read by a real consumer of the format: `go tool pprof`
    // (Debian's Go). Cumulative shares of the two functions as the folded file's, exactly (the
    // same samples), and the request phase as a label.
    let pprof = dir.join("cpu.pb.gz");
    let go = |args: &[&str]| {
        let out = Command::new("go").args(["tool", "pprof"]).args(args).arg(&pprof).output().expect("go (golang-go)");
        assert!(out.status.success(), "go tool pprof {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = go(&["-top", "-cum", "-nodecount=200", "-sample_index=samples"]);
    // Lines: flat flat% sum% cum cum% name
    let cum = |name: &str| -> f64 {
        top.lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 6 && f[5] == name).then(|| f[3].parse::<f64>().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("{name} not in go tool pprof -top:\n{top}"))
    };
    let (ga, gb) = (cum("burn_a"), cum("burn_b"));
    let (ga, gb) = (ga / (ga + gb), gb / (ga + gb));
    eprintln!("go tool pprof: burn_a {:.1}% burn_b {:.1}%", ga * 100.0, gb * 100.0);
    assert!((ga - a).abs() < 0.005 && (gb - b).abs() < 0.005, "pprof {ga}/{gb} vs folded {a}/{b}:\n{top}");
    let tags = go(&["-tags"]);
    assert!(tags.contains("phase") && tags.contains("idle"), "the phase label:\n{tags}");
}

#[test]
fn stripped_binary_gives_unknown_frames_with_module() {
    let _serial = require_root();
    let dir = scratch_dir("cpu-stripped");
    let (_, stripped) = build_burn(&dir);
    let (mut child, pid) = start_ready(Command::new(&stripped).args(["4", "70"]));
    let (_, folded) = profile(pid, &dir, "2", "99");
    child.kill().ok();
    child.wait().ok();
    assert!(share(&folded, |f| f == "[unknown burn-stripped]") > 0.9, "{folded:?}");
}

#[test]
fn rust_fixture_shows_demangled_paths() {
    let _serial = require_root();
    let dir = scratch_dir("cpu-rust");
    let exe = workspace_root().join("target/release/stage-target-rs");
    let (mut child, pid) = start_ready(Command::new(&exe).args(["burn", "4"]));
    let (_, folded) = profile(pid, &dir, "2", "99");
    child.kill().ok();
    child.wait().ok();
    let s = share(&folded, |f| f == "stage_target_rs::pipeline::burn_rust");
    assert!(s > 0.8, "demangled Rust path: {s} {folded:?}");
    // A release build has no frame pointers (nor has the prebuilt std): whole stacks, from
    // `_start` through std's runtime to `main`, come from `.eh_frame` unwinding.
    let total: u64 = folded.values().sum();
    let whole: u64 = folded
        .iter()
        .filter(|(st, _)| {
            let user: Vec<&str> = st.split(';').skip(1).filter(|f| !f.ends_with("_[k]")).collect();
            user.first() == Some(&"_start")
                && user.contains(&"stage_target_rs::main")
                && user.iter().any(|f| f.starts_with("std::rt::lang_start"))
        })
        .map(|(_, n)| n)
        .sum();
    eprintln!("rust: whole stacks {whole} of {total}");
    assert!(whole as f64 >= 0.95 * total as f64, "whole Rust stacks {whole} of {total}: {folded:#?}");
}

#[test]
fn node_jit_frames_from_perf_map() {
    let _serial = require_root();
    let dir = scratch_dir("cpu-node");
    let js = workspace_root().join("tests/targets/hot.js");
    let (mut child, pid) = start_ready(Command::new("node").arg("--perf-basic-prof").arg(&js).arg("6"));
    std::thread::sleep(std::time::Duration::from_millis(500)); // let V8 JIT-compile it
    let (_, folded) = profile(pid, &dir, "2", "99");
    child.kill().ok();
    child.wait().ok();
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    let s = share(&folded, |f| f.contains("hotJsFunction"));
    assert!(s > 0.5, "JavaScript function name from /tmp/perf-PID.map: {s}");
}

#[test]
fn prefill_and_decode_flamegraphs_split_by_phase() {
    let _serial = require_root();
    let dir = scratch_dir("cpu-phase");
    let server = Server::start(ServerKind::Rust, &dir);
    let svg = dir.join("cpu.svg");
    let agent = Agent::attach(
        server.pid(),
        &dir.join("report.json"),
        &["--flamegraph", svg.to_str().unwrap(), "--folded", dir.join("cpu.folded").to_str().unwrap()],
    );
    // One stream at a time: 150 ms of prefill work, then 20 tokens 20 ms apart of decode work.
    let load = testbed::run_load(&server.addr(), 6, 1, true, "tokens=20&interval_ms=20&prefill_ms=150&burn=1", "burn")
        .unwrap();
    assert_eq!(load.errors, 0);
    let _ = agent.stop();
    let prefill = read_folded(&dir.join("cpu.prefill.folded"));
    let decode = read_folded(&dir.join("cpu.decode.folded"));
    let (pp, pd) = (share(&prefill, |f| f.contains("prefill_work")), share(&prefill, |f| f.contains("decode_work")));
    let (dp, dd) = (share(&decode, |f| f.contains("prefill_work")), share(&decode, |f| f.contains("decode_work")));
    eprintln!("prefill profile: prefill_work {pp:.2} decode_work {pd:.2}; decode profile: prefill_work {dp:.2} decode_work {dd:.2}");
    assert!(pp > 0.6 && pp > 3.0 * pd, "prefill flamegraph dominated by prefill_work");
    assert!(dd > 0.6 && dd > 3.0 * dp, "decode flamegraph dominated by decode_work");
    assert!(dir.join("cpu.prefill.svg").exists() && dir.join("cpu.decode.svg").exists());
}

/// `--off-cpu`: a thread that blocks 14 ms per cycle in block_a (nanosleep) and ~6 ms in block_b
/// (a pipe read answered by another thread). Ground truth is the fixture's own wall time in each
/// function; the off-CPU flamegraph must give the same split within 5 points and account for
/// about the whole attach window of that thread.
#[test]
fn off_cpu_time_by_blocking_function() {
    off_cpu_case("cpu-offcpu", "-fno-omit-frame-pointer");
}

/// Issue 13: the same fixture without frame pointers. Only the `.eh_frame` walk from the
/// registers the thread saved on entering the kernel finds the callers of libc's syscall
/// wrappers, so the blocked time lands under `main;block_a;nap` and `main;block_b;wait_pipe`,
/// whole from `_start`.
#[test]
fn off_cpu_stacks_without_frame_pointers() {
    off_cpu_case("cpu-offcpu-nofp", "-fomit-frame-pointer");
}

fn off_cpu_case(name: &str, frame_pointers: &str) {
    let _serial = require_root();
    let dir = scratch_dir(name);
    let exe = dir.join("block");
    let st = Command::new("cc")
        .args(["-O2", "-g", frame_pointers, "-fno-optimize-sibling-calls", "-pthread", "-o"])
        .arg(&exe)
        .arg(workspace_root().join("tests/targets/block.c"))
        .status()
        .unwrap();
    assert!(st.success());
    let truth_file = dir.join("truth.txt");
    // The fixture counts from SIGUSR1, sent once we are attached, and exits 3 s later: its truth
    // covers our window but for the few milliseconds between attaching and the signal.
    let (mut child, pid) = start_ready(Command::new(&exe).args(["3", "14", "6"]).arg(&truth_file));
    let folded = dir.join("cpu.folded");
    let agent = Agent::attach(
        pid,
        &dir.join("report.json"),
        &["--folded", folded.to_str().unwrap(), "--off-cpu", "--frequency", "49"],
    );
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
    assert!(child.wait().unwrap().success());
    let report = agent.wait_report();
    let off = read_folded(&dir.join("cpu.offcpu.folded"));
    let truth: HashMap<String, f64> = std::fs::read_to_string(&truth_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_string(), v.parse::<f64>().unwrap())))
        .collect();
    let (ta, tb) = (truth["block_a_ns"], truth["block_b_ns"]);
    let truth_a = ta / (ta + tb);
    let us = |name: &str| -> u64 { off.iter().filter(|(s, _)| s.split(';').any(|f| f == name)).map(|(_, n)| n).sum() };
    let (a_us, b_us) = (us("block_a"), us("block_b"));
    let ours_a = a_us as f64 / (a_us + b_us).max(1) as f64;
    eprintln!(
        "off-CPU ({frame_pointers}): block_a {a_us} us, block_b {b_us} us (share {:.1}%); fixture: {:.1}% of {:.3} s",
        ours_a * 100.0,
        truth_a * 100.0,
        (ta + tb) / 1e9
    );
    assert!((ours_a - truth_a).abs() <= 0.05, "block_a share {ours_a} vs truth {truth_a}");
    // The main thread blocks nearly all the time, so the time we put on the two functions is
    // what the fixture measured, plus the cycles between attaching and the signal.
    let ours_s = (a_us + b_us) as f64 / 1e6;
    let truth_s = (ta + tb) / 1e9;
    assert!(ours_s > 0.9 * truth_s && ours_s < 1.15 * truth_s, "off-CPU {ours_s:.3} s vs fixture {truth_s:.3} s");
    assert!(report["off_cpu"]["total_us"].as_u64().unwrap() >= a_us + b_us);
    assert!(off.keys().any(|s| s.contains("_[k]")), "kernel frames of the blocking syscalls");
    // The whole chain: from `_start` through main and the named function to the function that
    // made the blocking call (gcc may name a static function's clone `nap.isra.0`).
    let whole = |st: &str, chain: [&str; 3]| {
        let user: Vec<&str> = st.split(';').skip(1).filter(|f| !f.ends_with("_[k]")).collect();
        user.first() == Some(&"_start")
            && user.windows(3).any(|w| w.iter().zip(chain).all(|(f, c)| *f == c || f.starts_with(&format!("{c}."))))
    };
    let chained: u64 = off
        .iter()
        .filter(|(s, _)| whole(s, ["main", "block_a", "nap"]) || whole(s, ["main", "block_b", "wait_pipe"]))
        .map(|(_, n)| n)
        .sum();
    eprintln!("off-CPU ({frame_pointers}): {chained} us of {} us under the whole chain", a_us + b_us);
    assert!(chained as f64 >= 0.95 * (a_us + b_us) as f64, "whole chains {chained} of {} us: {off:#?}", a_us + b_us);
}

/// The unwinding fixture (tests/targets/unwind*.c), all built `-O2 -fomit-frame-pointer`:
/// the executable, `libunwshared.so` it links, and `libunwplugin.so` it dlopens.
fn build_unwind_fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let src = |f: &str| workspace_root().join("tests/targets").join(f);
    let out = |f: &str| dir.join(f).display().to_string();
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    let lib_dir = format!("-L{}", dir.display());
    let cc = |args: &[&str]| {
        let st = Command::new("cc").args(["-O2", "-fomit-frame-pointer"]).args(args).status().unwrap();
        assert!(st.success(), "cc {args:?}");
    };
    cc(&["-shared", "-fPIC", "-o", &out("libunwshared.so"), src("unwind_shared.c").to_str().unwrap()]);
    let plugin = out("libunwplugin.so");
    cc(&["-shared", "-fPIC", "-o", &plugin, src("unwind_plugin.c").to_str().unwrap(), &lib_dir, "-lunwshared", &rpath]);
    let exe = out("unwind");
    cc(&["-o", &exe, src("unwind.c").to_str().unwrap(), &lib_dir, "-lunwshared", &rpath, "-pthread", "-ldl"]);
    (PathBuf::from(exe), PathBuf::from(plugin))
}

/// A user stack (folded line without the command name) that reaches a thread's entry point
/// through the fixture's whole chain: `_start … main;serve` or `clone3 … worker;serve`.
fn whole_chain(stack: &str) -> bool {
    let user: Vec<&str> = stack.split(';').skip(1).filter(|f| !f.ends_with("_[k]")).collect();
    let root_ok = user.first().is_some_and(|r| {
        ["_start", "start_thread", "clone3", "__clone3", "clone", "__clone"].contains(r)
            || r.starts_with("[unknown libc.so")
    });
    let text = user.join(";");
    root_ok && (text.contains(";main;serve") || text.contains(";worker;serve"))
}

/// Issue 13: no frame pointers anywhere in the fixture, so only `.eh_frame` unwinding can give
/// whole stacks. Two threads, a shared library, a plugin dlopen'ed after the agent attached,
/// a recursion; dispatch calls alpha 7 times and beta 3 times in 10 with equal work.
#[test]
fn whole_stacks_without_frame_pointers() {
    let _serial = require_root();
    let dir = scratch_dir("cpu-unwind");
    let (exe, plugin) = build_unwind_fixture(&dir);
    let (mut child, pid) = start_ready(Command::new(&exe).arg("6").arg(&plugin));
    let folded_path = dir.join("cpu.folded");
    let agent = Agent::attach(
        pid,
        &dir.join("report.json"),
        &["--duration", "4", "--frequency", "499", "--folded", folded_path.to_str().unwrap()],
    );
    // Only now does the fixture dlopen its plugin and start working.
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
    // Debian's perf with DWARF unwinding on the same process meanwhile, for comparison.
    let perf_data = dir.join("perf.data");
    let perf = Command::new("perf")
        .args(["record", "-F", "99", "--call-graph", "dwarf", "-e", "cpu-clock", "-p", &pid.to_string(), "-o"])
        .arg(&perf_data)
        .args(["--", "sleep", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let report = agent.wait_report();
    child.kill().ok();
    child.wait().ok();
    let folded = read_folded(&folded_path);
    let total: u64 = folded.values().sum();
    let whole: u64 = folded.iter().filter(|(s, _)| whole_chain(s)).map(|(_, n)| n).sum();
    let count = |needle: &str| -> u64 { folded.iter().filter(|(s, _)| s.contains(needle)).map(|(_, n)| n).sum() };
    let a = count(";serve;dispatch;alpha;shared_leaf;shared_recurse");
    let b = count(";serve;dispatch;beta;plugin_beta;shared_leaf;shared_recurse");
    let deep = count("shared_recurse;shared_recurse;shared_recurse;shared_recurse");
    let threads = (count(";main;serve;dispatch"), count(";worker;serve;dispatch"));
    let cpu = &report["cpu"];
    eprintln!(
        "unwind: {total} samples, whole chain {:.1}%, alpha {:.1}% beta {:.1}% (of alpha+beta), recursion 4 deep {:.1}%, \
         threads main/worker {}/{}; report: truncated {} by {}, unwound {}, tables {}",
        whole as f64 * 100.0 / total.max(1) as f64,
        a as f64 * 100.0 / (a + b).max(1) as f64,
        b as f64 * 100.0 / (a + b).max(1) as f64,
        deep as f64 * 100.0 / total.max(1) as f64,
        threads.0,
        threads.1,
        cpu["truncated"],
        cpu["truncated_by"],
        cpu["unwound"],
        cpu["unwind_tables"]
    );
    // 2 threads x 499 Hz x 4 s is ~4000 when both have a CPU; a loaded 2-core machine gives
    // far less (344 once, with other builds running).
    assert!(total >= 200, "samples: {total}");
    assert!(whole as f64 >= 0.95 * total as f64, "whole chains {whole} of {total}: {folded:#?}");
    let share_a = a as f64 / (a + b).max(1) as f64;
    // Within 5 points, or 3 standard errors of a share from this few samples when that is
    // more (from ~850 samples on it is less).
    let tolerance = (3.0 * (0.7 * 0.3 / (a + b).max(1) as f64).sqrt()).max(0.05);
    assert!((share_a - 0.70).abs() <= tolerance, "alpha share {share_a} (tolerance {tolerance})");
    assert!(a + b >= total * 9 / 10, "samples under alpha/beta through the libraries: {} of {total}", a + b);
    assert!(deep as f64 >= 0.8 * total as f64, "the recursion is whole: {deep} of {total}");
    assert!(threads.0 as f64 > 0.3 * total as f64 && threads.1 as f64 > 0.3 * total as f64, "both threads {threads:?}");
    assert!(cpu["truncated"].as_u64().unwrap() as f64 <= 0.05 * total as f64, "{cpu}");
    assert!(cpu["unwound"].as_u64().unwrap() >= total * 95 / 100, "unwound from .eh_frame: {cpu}");
    assert!(cpu["unwind_tables"]["files"].as_u64().unwrap() >= 4, "exe, libunwshared, plugin, libc: {cpu}");

    // perf's DWARF unwinding of the same process agrees on the split.
    if perf.is_ok_and(|s| s.success()) {
        let script = Command::new("perf").arg("script").arg("-i").arg(&perf_data).output().unwrap();
        let mut out = Vec::new();
        use inferno::collapse::Collapse;
        inferno::collapse::perf::Folder::default().collapse(&script.stdout[..], &mut out).unwrap();
        let perf_folded = parse_folded(&String::from_utf8_lossy(&out));
        let pa = share(&perf_folded, |f| f == "alpha");
        let pb = share(&perf_folded, |f| f == "beta");
        let perf_a = pa / (pa + pb).max(1e-9);
        let tolerance = perf_tolerance(perf_a, &script.stdout);
        eprintln!(
            "perf --call-graph dwarf: alpha {:.1}% beta {:.1}% (tolerance {tolerance:.3})",
            perf_a * 100.0,
            100.0 - perf_a * 100.0,
        );
        assert!((perf_a - share_a).abs() <= tolerance, "perf {perf_a} vs ours {share_a}");
    } else {
        panic!("perf record --call-graph dwarf failed");
    }
}

/// The C++ unwinding fixture (tests/targets/unwind_cpp*.cpp), all built `-O2
/// -fomit-frame-pointer`: the executable, `libunwcpp.so` it links, and `libunwcppplugin.so` it
/// dlopens.
fn build_unwind_cpp_fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let src = |f: &str| workspace_root().join("tests/targets").join(f).display().to_string();
    let out = |f: &str| dir.join(f).display().to_string();
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    let lib_dir = format!("-L{}", dir.display());
    let cxx = |args: &[&str]| {
        let st = Command::new("g++").args(["-O2", "-fomit-frame-pointer"]).args(args).status().unwrap();
        assert!(st.success(), "g++ {args:?}");
    };
    cxx(&["-shared", "-fPIC", "-o", &out("libunwcpp.so"), &src("unwind_cpp_lib.cpp")]);
    let plugin = out("libunwcppplugin.so");
    cxx(&["-shared", "-fPIC", "-o", &plugin, &src("unwind_cpp_plugin.cpp"), &lib_dir, "-lunwcpp", &rpath]);
    let exe = out("unwind_cpp");
    cxx(&["-o", &exe, &src("unwind_cpp.cpp"), &lib_dir, "-lunwcpp", &rpath, "-pthread", "-ldl"]);
    (PathBuf::from(exe), PathBuf::from(plugin))
}

/// Issue 13 in C++: two threads (main and a `std::thread`), a shared library, a plugin
/// dlopen'ed after the agent attached (a virtual call), a recursion and a template, no frame
/// pointers anywhere. Ground truth is the fixture's own CPU clock per function.
#[test]
fn cpp_whole_stacks_without_frame_pointers() {
    let _serial = require_root();
    let dir = scratch_dir("cpu-unwind-cpp");
    let (exe, plugin) = build_unwind_cpp_fixture(&dir);
    let truth_file = dir.join("truth.txt");
    let (mut child, pid) = start_ready(Command::new(&exe).arg("5").arg(&plugin).arg(&truth_file));
    let folded_path = dir.join("cpu.folded");
    let agent = Agent::attach(
        pid,
        &dir.join("report.json"),
        &["--frequency", "499", "--folded", folded_path.to_str().unwrap()],
    );
    // Only now does the fixture dlopen its plugin, start its clocks and work, until it exits.
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
    let perf_data = dir.join("perf.data");
    let perf = Command::new("perf")
        .args(["record", "-F", "99", "--call-graph", "dwarf", "-e", "cpu-clock", "-p", &pid.to_string(), "-o"])
        .arg(&perf_data)
        .args(["--", "sleep", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(child.wait().unwrap().success());
    let report = agent.wait_report();
    let folded = read_folded(&folded_path);
    let truth: HashMap<String, f64> = std::fs::read_to_string(&truth_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_string(), v.parse::<f64>().unwrap())))
        .collect();
    let total: u64 = folded.values().sum();
    let count = |pred: &dyn Fn(&str) -> bool| -> u64 { folded.iter().filter(|(s, _)| pred(s)).map(|(_, n)| n).sum() };
    let names = ["infer::Engine::prefill(long)", "infer::Engine::decode(long)", "long infer::Engine::sample<4>(long)"];
    let keys = ["prefill_ns", "decode_ns", "sample_ns"];
    let ours: Vec<u64> = names.iter().map(|n| count(&|s: &str| s.split(';').any(|f| f == *n))).collect();
    let ours_sum: u64 = ours.iter().sum();
    let truth_sum: f64 = keys.iter().map(|k| truth[*k]).sum();
    // Whole: from a thread's root through the server's loop (main's, or the std::thread's).
    // The std::thread's loop is reached through libstdc++ and the thread's `_M_run`.
    let worker_chain = ";std::thread::_State_impl<";
    let whole = count(&|s: &str| {
        whole_chain_to(s, &[";main;infer::Server::serve();infer::Server::step(long);"])
            || (whole_chain_to(s, &[";infer::Server::serve();infer::Server::step(long);"]) && s.contains(worker_chain))
    });
    let reduce = "mathlib::reduce(long, int)";
    let deep = count(&|s: &str| s.contains(&[reduce; 4].join(";")));
    let via_plugin =
        count(&|s: &str| s.contains(&format!("infer::Engine::decode(long);plugin::GreedyDecoder::run(long);{reduce}")));
    let threads = (
        count(&|s: &str| s.contains(";main;infer::Server::serve()")),
        count(&|s: &str| s.contains(worker_chain) && s.contains(";infer::Server::serve()")),
    );
    let mangled = count(&|s: &str| s.split(';').any(|f| f.starts_with("_Z")));
    eprintln!(
        "unwind C++: {total} samples, whole chain {:.1}%, threads main/worker {}/{}, recursion 4 deep {deep}, \
         decode via plugin {via_plugin} of {}, mangled {mangled}; report: truncated {} by {}, unwound {}",
        whole as f64 * 100.0 / total.max(1) as f64,
        threads.0,
        threads.1,
        ours[1],
        report["cpu"]["truncated"],
        report["cpu"]["truncated_by"],
        report["cpu"]["unwound"]
    );
    assert!(total >= 200, "samples: {total}");
    assert!(whole as f64 >= 0.95 * total as f64, "whole chains {whole} of {total}: {folded:#?}");
    for i in 0..3 {
        let (s, t) = (ours[i] as f64 / ours_sum.max(1) as f64, truth[keys[i]] / truth_sum);
        // Within 5 points, or 3 standard errors of a share from this few samples when that is more.
        let tolerance = (3.0 * (t * (1.0 - t) / ours_sum.max(1) as f64).sqrt()).max(0.05);
        eprintln!("  {}: {:.1}% sampled, {:.1}% by the fixture's CPU clock", names[i], s * 100.0, t * 100.0);
        assert!((s - t).abs() <= tolerance, "{} share {s} vs truth {t} (tolerance {tolerance})", names[i]);
    }
    assert!(ours_sum >= total * 9 / 10, "samples under the three: {ours_sum} of {total}");
    assert!(deep as f64 >= 0.8 * (ours[0] + ours[1]) as f64, "the recursion is whole: {deep}");
    assert!(via_plugin as f64 >= 0.95 * ours[1] as f64, "decode through the plugin: {via_plugin} of {}", ours[1]);
    assert!(threads.0 as f64 > 0.2 * total as f64 && threads.1 as f64 > 0.2 * total as f64, "both threads {threads:?}");
    assert_eq!(mangled, 0, "demangled names");
    assert!(report["cpu"]["unwound"].as_u64().unwrap() >= total * 95 / 100, "{}", report["cpu"]);

    // perf's DWARF unwinding of the same process agrees on the order and the shares.
    assert!(perf.is_ok_and(|s| s.success()), "perf record --call-graph dwarf failed");
    let script = Command::new("perf").arg("script").arg("-i").arg(&perf_data).output().unwrap();
    let mut out = Vec::new();
    use inferno::collapse::Collapse;
    inferno::collapse::perf::Folder::default().collapse(&script.stdout[..], &mut out).unwrap();
    let perf_folded = parse_folded(&String::from_utf8_lossy(&out));
    let perf_shares: Vec<f64> = ["infer::Engine::prefill", "infer::Engine::decode", "infer::Engine::sample<4>"]
        .iter()
        .map(|n| share(&perf_folded, |f| f.contains(n)))
        .collect();
    let perf_sum: f64 = perf_shares.iter().sum();
    for i in 0..3 {
        let (p, s) = (perf_shares[i] / perf_sum.max(1e-9), ours[i] as f64 / ours_sum.max(1) as f64);
        eprintln!("  perf --call-graph dwarf: {} {:.1}% (ours {:.1}%)", names[i], p * 100.0, s * 100.0);
        let tolerance = perf_tolerance(p, &script.stdout);
        assert!((p - s).abs() <= tolerance, "perf {p} vs ours {s} for {} (tolerance {tolerance})", names[i]);
    }
    assert!(perf_shares[0] > perf_shares[1] && perf_shares[0] > perf_shares[2], "perf's top function: {perf_shares:?}");
}

/// A user stack that starts at a thread's root and holds one of `chains`.
fn whole_chain_to(stack: &str, chains: &[&str]) -> bool {
    let user: Vec<&str> = stack.split(';').skip(1).filter(|f| !f.ends_with("_[k]")).collect();
    let root_ok = user.first().is_some_and(|r| {
        ["_start", "start_thread", "clone3", "__clone3", "clone", "__clone"].contains(r)
            || r.starts_with("[unknown libc.so")
    });
    let text = format!(";{};", user.join(";"));
    root_ok && chains.iter().any(|c| text.contains(c))
}

/// A row array too small for libc (`INFERSCOPE_UNWIND_TABLE_KIB=64`: 8,192 rows, libc alone has
/// ~20k): libc goes without a table, counted in `table_full`, and is walked by frame pointers,
/// while the fixture's own files still give the chain from main/worker down to the leaf.
#[test]
fn unwind_table_size_is_configurable_and_overflow_counted() {
    let _serial = require_root();
    let dir = scratch_dir("cpu-unwind-small");
    let (exe, plugin) = build_unwind_fixture(&dir);
    let (mut child, pid) = start_ready(Command::new(&exe).arg("3").arg(&plugin));
    let folded_path = dir.join("cpu.folded");
    let agent = Agent::attach_with_env(
        pid,
        &dir.join("report.json"),
        &["--duration", "2", "--frequency", "499", "--folded", folded_path.to_str().unwrap()],
        &[("INFERSCOPE_UNWIND_TABLE_KIB", Path::new("64"))],
    );
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
    let report = agent.wait_report();
    child.kill().ok();
    child.wait().ok();
    let folded = read_folded(&folded_path);
    let total: u64 = folded.values().sum();
    let chained: u64 = folded.iter().filter(|(s, _)| s.contains(";serve;dispatch;")).map(|(_, n)| n).sum();
    let tables = &report["cpu"]["unwind_tables"];
    eprintln!("small table: {total} samples, {chained} through serve;dispatch; tables {tables}");
    assert_eq!(tables["capacity_bytes"], 64 * 1024, "{tables}");
    assert!(tables["table_full"].as_u64().unwrap() >= 1, "libc does not fit: {tables}");
    assert!(tables["map_bytes"].as_u64().unwrap() <= 64 * 1024, "{tables}");
    assert!(total >= 100, "samples: {total}");
    assert!(chained as f64 >= 0.9 * total as f64, "the fixture's own frames are whole: {chained} of {total}");
}

/// How far perf's share `p` may be from ours: 10 points, or 3 standard errors of a share from
/// perf's sample count when that is more (99 Hz for 2-3 s on a loaded 2-core machine gives perf
/// ~100 samples, ±5 points at one sigma).
/// `perf script` prints one unindented header line per sample, its frames indented below it
/// (the folded counts are periods in ns, not samples).
fn perf_tolerance(p: f64, script: &[u8]) -> f64 {
    let text = String::from_utf8_lossy(script);
    let n = text.lines().filter(|l| l.chars().next().is_some_and(|c| !c.is_whitespace())).count().max(1) as f64;
    eprintln!("perf: {n} samples");
    (3.0 * (p * (1.0 - p) / n).sqrt()).max(0.10)
}
