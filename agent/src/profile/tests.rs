use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use agent_common::{phase, SampleKey};

use super::fold::{LineKeys, THREAD_ROOTS};
use super::names::Names;
use super::svg::pruned_for_svg;
use super::*;
use crate::symbols::Symbolizer;

#[test]
fn kallsyms_lookup_and_phase_paths() {
    let k = Kallsyms::parse("ffffffff81000000 T _stext\nffffffff81000100 t do_thing\n0000000000000000 T hidden\n");
    assert_eq!(k.lookup(0xffffffff81000150), Some("do_thing"));
    assert_eq!(k.lookup(0x10), None);
    assert_eq!(phase_path(Path::new("/o/cpu.svg"), "prefill"), PathBuf::from("/o/cpu.prefill.svg"));
    assert_eq!(phase_path(Path::new("/o/cpu.svg"), "all"), PathBuf::from("/o/cpu.svg"));
    assert_eq!(phase_path(Path::new("/o/stacks"), "decode"), PathBuf::from("/o/stacks.decode"));
}

#[test]
fn kallsyms_as_before() {
    // The parser as it was: a String per symbol.
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default()
        + "ffffffff81000000 t with_module\t[mod]\nzz T bad_address\nffffffff81000010 d data\n0 T\n";
    let mut before: Vec<(u64, String)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let addr = u64::from_str_radix(it.next()?, 16).ok()?;
            let kind = it.next()?;
            let name = it.next()?;
            (addr != 0 && matches!(kind, "t" | "T" | "w" | "W")).then(|| (addr, name.to_string()))
        })
        .collect();
    before.sort_unstable_by_key(|s| s.0);
    let k = Kallsyms::parse(&text);
    assert_eq!(k.syms.len(), before.len());
    for (i, (addr, name)) in before.iter().enumerate().step_by(7) {
        // Equal addresses: either name (the sort is unstable in both).
        let same_addr = |n: &str| before.iter().skip(i.saturating_sub(50)).take(100).any(|b| b.0 == *addr && b.1 == n);
        let got = k.lookup(*addr).unwrap_or_default();
        assert!(got == name || same_addr(got), "{addr:x}: {got} vs {name}");
    }
}

/// The fold as it was before stacks were folded once per (user, kernel) pair: per sample,
/// every frame escaped and the line built and counted in "all" and in its phase.
fn reference_fold(raw: &RawProfile, cache: &HashMap<i32, Vec<String>>, kallsyms: &Kallsyms, comm: &str) -> Folded {
    let mut out = Folded::default();
    let mut by_phase: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (key, n) in &raw.samples {
        let n = *n;
        out.samples += n;
        let mut frames: Vec<String> = vec![comm.to_string()];
        match cache.get(&key.user_stack) {
            Some(names) if key.user_stack >= 0 => {
                if !names
                    .first()
                    .is_some_and(|root| THREAD_ROOTS.iter().any(|r| root == r) || root.starts_with("[unknown libc.so"))
                {
                    out.truncated += n;
                }
                frames.extend(names.iter().cloned());
            }
            _ => {
                out.no_user_stack += n;
                frames.push("[no user stack]".to_string());
            }
        }
        if let Some(ips) = raw.stacks.get(&key.kernel_stack).filter(|_| key.kernel_stack >= 0) {
            frames.extend(ips.iter().rev().map(|&ip| format!("{}_[k]", kallsyms.lookup(ip).unwrap_or("[unknown]"))));
        }
        let line = frames.iter().map(|f| f.replace(';', ":")).collect::<Vec<_>>().join(";");
        let phase_name = phase::NAMES.get(key.phase as usize).copied().unwrap_or("other");
        *by_phase.entry("all".into()).or_default().entry(line.clone()).or_default() += n;
        *by_phase.entry(phase_name.into()).or_default().entry(line).or_default() += n;
    }
    out.by_phase = by_phase
        .into_iter()
        .map(|(p, m)| (p, m.into_iter().map(|(l, n)| (Stack::from(l.as_str()), n)).collect()))
        .collect();
    out
}

/// Names that sort differently as frames than as text (`foo` < `foo(int)` as frames, but
/// `foo(int);…` < `foo;…` as text), with `;` and spaces in them; the last one, as a leaf,
/// reads to inferno as a second count column.
const TRICKY: &[&str] = &[
    "foo",
    "foo(int)",
    "foo bar",
    "foo;bar",
    "fo",
    "foo_[k]",
    "a::b<c; 2>",
    "[unknown]",
    "z",
    "foo!",
    "foo::{{closure}}",
    "foo2",
    "foo 1",
];

/// A small profile with every case `fold` distinguishes: stacks sharing prefixes, names
/// with `;`, two stack ids that symbolize alike, missing and negative stack ids, a count of
/// 0, phases out of range, kernel frames with and without a symbol.
///
/// Odd seeds also use the name inferno reads as a count; one sample of `heavy` makes
/// inferno leave out the frames narrower than `heavy` / 10,000.
fn tricky_profile(seed: u64, n: usize, heavy: u64) -> (RawProfile, HashMap<i32, Vec<String>>, Kallsyms) {
    let names = if seed % 2 == 1 { TRICKY } else { &TRICKY[..TRICKY.len() - 1] };
    let mut x = seed;
    let mut rnd = move |m: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m as u64) as usize
    };
    let kallsyms =
        Kallsyms::parse("ffffffff81000000 T entry;64\nffffffff81000100 t do_thing\nffffffff81000200 T schedule\n");
    let mut raw = RawProfile::default();
    let mut cache = HashMap::new();
    for id in 0..40 {
        let depth = 1 + rnd(5);
        let names_ = names;
        let mut names: Vec<String> = Vec::new();
        if rnd(3) > 0 {
            names.push(["_start", "start_thread", "[unknown libc.so.6]", "main"][rnd(4)].to_string());
        }
        names.extend((0..depth).map(|_| names_[rnd(names_.len())].to_string()));
        raw.stacks.insert(id, vec![0x1000; names.len()]);
        cache.insert(id, names);
    }
    // Two ids with the same frames, as two call sites in the same functions give.
    cache.insert(40, cache[&3].clone());
    raw.stacks.insert(40, vec![0x1000; cache[&3].len()]);
    for id in 100..110 {
        let k: Vec<u64> = (0..1 + rnd(3))
            .map(|_| [0xffffffff81000010, 0xffffffff81000110, 0xffffffff81000210, 0x10][rnd(4)])
            .collect();
        raw.stacks.insert(id, k);
    }
    for _ in 0..n {
        let user_stack = [rnd(41) as i32, -1, 77, 3, 40][rnd(5).min(rnd(5))];
        let kernel_stack = [-1, 100 + rnd(10) as i32, 200, -14][rnd(4)];
        let phase = [0, 1, 2, 9][rnd(4)];
        let count = [0, 1, 2, 57][rnd(4)];
        raw.samples.push((SampleKey { tgid: 1 + rnd(2) as u32, phase, user_stack, kernel_stack }, count));
    }
    for phase in 0..3 {
        raw.samples.push((SampleKey { tgid: 1, phase, user_stack: 5, kernel_stack: -1 }, heavy));
    }
    (raw, cache, kallsyms)
}

fn user_frames(names: &HashMap<i32, Vec<String>>) -> UserFrames {
    let mut cache = UserFrames::new();
    for (&id, names) in names {
        cache.insert(id, names);
    }
    cache
}

fn same_folded(a: &Folded, b: &Folded) {
    assert_eq!((a.samples, a.no_user_stack, a.truncated, a.unit), (b.samples, b.no_user_stack, b.truncated, b.unit));
    let text = |f: &Folded| -> Vec<(String, Vec<String>)> {
        f.by_phase.iter().map(|(p, m)| (p.clone(), folded_lines(m))).collect()
    };
    assert_eq!(text(a), text(b));
    // Stacks of different folds compare as their text.
    assert_eq!(a.by_phase, b.by_phase);
}

#[test]
fn fold_matches_the_reference() {
    for seed in 1..200 {
        let (raw, names, kallsyms) = tricky_profile(seed, 1 + seed as usize % 90, seed * 100);
        let expected = reference_fold(&raw, &names, &kallsyms, "srv;1 x");
        let folded = fold(&raw, &mut Symbolizer::new(), &mut user_frames(&names), &kallsyms, "srv;1 x");
        same_folded(&folded, &expected);
    }
    let empty = fold(&RawProfile::default(), &mut Symbolizer::new(), &mut UserFrames::new(), &Kallsyms::default(), "x");
    assert!(empty.by_phase.is_empty() && empty.samples == 0);
}

#[test]
fn a_profile_without_samples_still_writes_its_files() {
    let dir = std::env::temp_dir().join(format!("inferscope-empty-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (svg, folded) = (dir.join("f.svg"), dir.join("f.folded"));
    let empty = fold(&RawProfile::default(), &mut Symbolizer::new(), &mut UserFrames::new(), &Kallsyms::default(), "x");
    let written = super::write(&empty, Some(&svg), Some(&folded), "srv <1>").unwrap();
    assert_eq!(written, vec![folded.clone(), svg.clone()]);
    assert_eq!(std::fs::read_to_string(&folded).unwrap(), "");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<?xml") && text.contains("no samples: 0 samples recorded"), "{text}");
    assert!(text.contains("srv &lt;1&gt;"), "title escaped: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn line_keys_sort_as_the_lines() {
    let mut names = Names::default();
    let mut x = 99u64;
    let mut rnd = move |m: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m as u64) as usize
    };
    let stacks: Vec<Vec<u32>> =
        (0..3000).map(|_| (0..rnd(7)).map(|_| names.intern(TRICKY[rnd(TRICKY.len())])).collect()).collect();
    let keys = LineKeys::new(&names);
    let key = |frames: &[u32]| {
        let mut k = Vec::new();
        keys.push(frames, &mut k);
        k
    };
    let line = |frames: &[u32]| frames.iter().map(|&id| format!(";{}", names.name(id))).collect::<String>();
    for a in &stacks[..300] {
        for b in &stacks {
            assert_eq!(key(a).cmp(&key(b)), line(a).cmp(&line(b)), "{:?} vs {:?}", line(a), line(b));
        }
    }
}

#[test]
fn write_matches_the_reference() {
    let dir = std::env::temp_dir().join(format!("inferscope-profile-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let (mut pruned, mut not_pruned) = (0, 0);
    for seed in 1..40 {
        // From nothing left out to nearly everything.
        let heavy = [0, 1_000, 30_000, 100_000, 300_000, 1_000_000, 100_000_000][seed as usize % 7];
        let (raw, names, kallsyms) = tricky_profile(seed, 100 + seed as usize * 37 % 400, heavy);
        let folded = fold(&raw, &mut Symbolizer::new(), &mut user_frames(&names), &kallsyms, "srv");
        assert!(folded.by_phase.len() == 5, "all + idle, prefill, decode, other: {:?}", folded.by_phase.keys());
        let (svg, folded_path) = (dir.join("cpu.svg"), dir.join("cpu.folded"));
        let written = write(&folded, Some(&svg), Some(&folded_path), "t").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(written.len(), 10);
        for (phase_name, stacks) in &folded.by_phase {
            let lines: Vec<(&Stack, u64)> = stacks.iter().map(|(s, &n)| (s, n)).collect();
            match pruned_for_svg(&lines, inferno::flamegraph::Options::default().min_width) {
                Some((lines, _)) if lines.len() < stacks.len() => pruned += 1,
                _ => not_pruned += 1,
            }
            // As before: one line string per stack, joined; the SVG from those lines on a
            // fresh thread (inferno's colour generator is per thread).
            let lines = folded_lines(stacks);
            let text = std::fs::read_to_string(phase_path(&folded_path, phase_name)).unwrap_or_default();
            assert_eq!(text, lines.join("\n") + "\n", "seed {seed}, {phase_name} folded");
            let count: u64 = stacks.values().sum();
            let title = format!("t — {phase_name}, {count} samples");
            let expected = std::thread::spawn(move || {
                let mut opts = inferno::flamegraph::Options::default();
                opts.title = title;
                let mut out = Vec::new();
                inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut out).map(|_| out)
            })
            .join()
            .unwrap_or_else(|_| panic!("inferno panicked"));
            let got = std::fs::read_to_string(phase_path(&svg, phase_name)).unwrap_or_default();
            match expected {
                Ok(expected) => {
                    assert!(got == String::from_utf8_lossy(&expected), "seed {seed}, {phase_name} svg differs")
                }
                Err(e) => panic!("{phase_name}: {e}"),
            }
        }
    }
    assert!(pruned > 40 && not_pruned > 40, "{pruned} phases drawn from pruned lines, {not_pruned} from all");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `top_functions` as it was: every frame of every line hashed, a set per line.
fn reference_top_functions(folded: &Folded) -> Vec<(String, f64, f64)> {
    let Some(all) = folded.by_phase.get("all") else { return Vec::new() };
    let total: u64 = all.values().sum();
    if total == 0 {
        return Vec::new();
    }
    let mut self_n: HashMap<String, u64> = HashMap::new();
    let mut total_n: HashMap<String, u64> = HashMap::new();
    for (stack, &c) in all {
        let stack = stack.to_string();
        let frames: Vec<String> = stack.split(';').skip(1).map(str::to_string).collect();
        if let Some(leaf) = frames.last() {
            *self_n.entry(leaf.clone()).or_default() += c;
        }
        let mut seen = std::collections::HashSet::new();
        for f in frames {
            if seen.insert(f.clone()) {
                *total_n.entry(f).or_default() += c;
            }
        }
    }
    total_n
        .iter()
        .map(|(f, &t)| (f.to_string(), *self_n.get(f).unwrap_or(&0) as f64 / total as f64, t as f64 / total as f64))
        .collect()
}

#[test]
fn top_functions_matches_the_reference() {
    for seed in 1..100 {
        let (raw, names, kallsyms) = tricky_profile(seed, 1 + seed as usize % 90, seed * 100);
        let mut folded = fold(&raw, &mut Symbolizer::new(), &mut user_frames(&names), &kallsyms, "srv");
        if seed % 3 == 0 {
            // Lines of the command name alone, and empty frames.
            let all = folded.by_phase.entry("all".into()).or_default();
            all.insert("srv".into(), 5);
            all.insert("srv;;x;;".into(), 3);
            all.insert("srv;;x;;;".into(), 2);
        }
        let mut got = top_functions(&folded, usize::MAX);
        assert!(got.windows(2).all(|w| (w[0].1, w[0].2) >= (w[1].1, w[1].2)), "by self, then total");
        let mut expected = reference_top_functions(&folded);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, expected, "seed {seed}");
    }
}

#[test]
fn top_functions_self_and_total() {
    let mut f = Folded::default();
    let all = f.by_phase.entry("all".into()).or_default();
    all.insert("srv;main;a".into(), 70);
    all.insert("srv;main;b".into(), 30);
    let top = top_functions(&f, 3);
    assert_eq!(top[0].0, "a");
    assert!((top[0].1 - 0.7).abs() < 1e-9);
    let main = top.iter().find(|t| t.0 == "main").expect("main is on every stack");
    assert!((main.2 - 1.0).abs() < 1e-9 && main.1 == 0.0);
}
