//! Symbolization throughput (issue 4): sampled user addresses → `function` through
//! `inferscope::symbols::Symbolizer`, the way `attach` does it (`profile::symbolize_new` over a
//! profile's stacks), for a real running process: this bench process itself. Its address space
//! holds a large Rust executable (the bench binary: criterion, tokio, aya…), libc, and
//! libstdc++ (dlopen'ed here so C++ names are demangled too).
//!
//! - cold: a new `Symbolizer` per iteration — `/proc/PID/maps` read, every touched ELF file
//!   loaded (`.symtab`/`.dynsym` parsed, sorted), lookups, first-use demangling.
//! - cached: one `Symbolizer` that has seen every address before — lookup + name copy only.
//!
//! `cargo bench -p inferscope --bench symbolize`

#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use agent_common::SampleKey;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use inferscope::profile::{symbolize_new, RawProfile, UserFrames};
use inferscope::symbols::{modules, ElfSymbols, Symbolizer};

mod common;
use common::Rng;

/// Runtime addresses inside sized functions of each executable module of this process, by
/// module file name: the middle of each function, as a sampled instruction pointer would be.
fn function_addresses() -> Vec<(String, Vec<u64>)> {
    let pid = std::process::id();
    let mut out = Vec::new();
    for m in modules(pid).unwrap() {
        let Some(open) = &m.open_path else { continue };
        let Ok(elf) = ElfSymbols::load(open) else { continue };
        let mut addrs = Vec::new();
        for s in elf.symbols().iter().filter(|s| s.size() > 1) {
            let Some(off) = elf.file_offset(s.vaddr() + s.size() / 2) else { continue };
            if let Some(r) = m.ranges.iter().find(|r| off >= r.file_offset && off - r.file_offset < r.end - r.start) {
                addrs.push(r.start + (off - r.file_offset));
            }
        }
        let name = m.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !addrs.is_empty() {
            out.push((name, addrs));
        }
    }
    out
}

/// `n` addresses drawn from the modules: 60 % the executable (Rust), 25 % libstdc++ (C++),
/// 15 % libc (C); other modules (ld.so, libgcc_s…) fill in if one is missing.
fn mixed_addresses(by_module: &[(String, Vec<u64>)], n: usize, rng: &mut Rng) -> Vec<u64> {
    let exe = std::env::current_exe().unwrap();
    let exe_name = exe.file_name().unwrap().to_string_lossy().into_owned();
    let pick = |pred: &dyn Fn(&str) -> bool| by_module.iter().find(|(name, _)| pred(name)).map(|(_, a)| a);
    let rust = pick(&|name| name == exe_name).expect("bench executable in its own maps");
    let cpp = pick(&|name| name.starts_with("libstdc++")).unwrap_or(rust);
    let c = pick(&|name| name.starts_with("libc.so")).unwrap_or(rust);
    (0..n)
        .map(|_| {
            let pool = match rng.below(100) {
                0..=59 => rust,
                60..=84 => cpp,
                _ => c,
            };
            pool[rng.below(pool.len())]
        })
        .collect()
}

/// A profile as the kernel hands it over: `stacks` distinct user stacks of 20–40 frames, leaf
/// first, drawn from `addrs` (so frames repeat across stacks, as they do in a real profile).
fn raw_profile(addrs: &[u64], stacks: usize, rng: &mut Rng) -> (RawProfile, usize) {
    let pid = std::process::id();
    let mut raw = RawProfile::default();
    let mut frames = 0;
    for id in 0..stacks as i32 {
        let depth = 20 + rng.below(21);
        let ips: Vec<u64> = (0..depth).map(|_| addrs[rng.below(addrs.len())]).collect();
        frames += ips.len();
        raw.stacks.insert(id, ips);
        raw.samples.push((SampleKey { tgid: pid, phase: 0, user_stack: id, kernel_stack: -1 }, 1));
    }
    (raw, frames)
}

fn bench(c: &mut Criterion) {
    // C++ code in the address space, as in llama.cpp / vLLM / TGI servers.
    // SAFETY: dlopen of a system library by name; the handle is deliberately never closed.
    let handle = unsafe { libc::dlopen(c"libstdc++.so.6".as_ptr(), libc::RTLD_NOW) };
    if handle.is_null() {
        eprintln!("libstdc++.so.6 not loadable: C++ frames replaced by Rust ones");
    }
    let by_module = function_addresses();
    for (name, a) in &by_module {
        eprintln!("module {name}: {} function addresses", a.len());
    }
    let pid = std::process::id();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    // Distinct addresses: what a profile's first symbolization pass sees.
    let addrs = mixed_addresses(&by_module, 10_000, &mut rng);
    {
        let mut s = Symbolizer::new();
        let named = addrs.iter().filter(|&&a| s.symbolize(pid, a).function.is_some()).count();
        eprintln!("{named} of {} addresses resolve to a function; {:?}", addrs.len(), s.stats());
    }

    let mut g = c.benchmark_group("symbolize");
    g.sample_size(10);

    // Cold: everything from scratch, 1,000 addresses (a profile's first pass over a few
    // hundred distinct stacks touches about this many distinct frames).
    let cold = &addrs[..1_000];
    g.throughput(Throughput::Elements(cold.len() as u64));
    g.bench_function("cold: new Symbolizer, 1000 addresses (exe + libstdc++ + libc)", |b| {
        b.iter(|| {
            let mut s = Symbolizer::new();
            for &a in cold {
                black_box(s.symbolize(pid, a));
            }
            s.stats().elf_loads
        })
    });
    // Cold start alone: one address in the executable (maps read + one ELF load).
    g.throughput(Throughput::Elements(1));
    g.bench_function("cold: new Symbolizer, first address in the executable", |b| {
        b.iter(|| Symbolizer::new().symbolize(pid, cold[0]))
    });

    // Cached: every address has been seen, every file is loaded.
    let mut warm = Symbolizer::new();
    for &a in &addrs {
        warm.symbolize(pid, a);
    }
    g.throughput(Throughput::Elements(addrs.len() as u64));
    g.bench_function("cached: 10000 addresses", |b| {
        b.iter(|| {
            for &a in &addrs {
                black_box(warm.symbolize(pid, a));
            }
        })
    });

    // The agent's own path: `symbolize_new` over 1,000 new stacks of 20–40 frames (fresh
    // UserFrames each time, so every stack is new to it; the Symbolizer is warm or cold).
    let (raw, frames) = raw_profile(&addrs, 1_000, &mut rng);
    g.throughput(Throughput::Elements(frames as u64));
    g.bench_function(format!("symbolize_new: 1000 stacks ({frames} frames), cached Symbolizer"), |b| {
        b.iter_batched(
            UserFrames::new,
            |mut cache| {
                symbolize_new(&raw, &mut warm, &mut cache);
                cache
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function(format!("symbolize_new: 1000 stacks ({frames} frames), cold Symbolizer"), |b| {
        b.iter_batched(
            || (Symbolizer::new(), UserFrames::new()),
            |(mut s, mut cache)| {
                symbolize_new(&raw, &mut s, &mut cache);
                cache
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
