//! Folded files and SVGs on disk, one per phase, the phases written in parallel.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::fold::Folded;
use super::stack::{Stack, StackText};
use super::svg::svg_of;

/// `FILE.svg` + phase → `FILE.prefill.svg`; "all" keeps the name as given.
pub fn phase_path(path: &Path, phase: &str) -> PathBuf {
    if phase == "all" {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{phase}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{phase}"),
    };
    path.with_file_name(name)
}

/// One phase's folded file and SVG; returns the files written, in that order.
fn write_phase(
    folded: &Folded,
    phase_name: &str,
    stacks: &BTreeMap<Stack, u64>,
    svg: Option<&Path>,
    folded_path: Option<&Path>,
    title: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    use std::fmt::Write as _;
    let mut written = Vec::new();
    if let Some(p) = folded_path {
        let p = phase_path(p, phase_name);
        // Streamed: the lines are already in order, no need to hold the file in memory.
        let mut f = std::fs::File::create(&p)?;
        let mut buf = String::with_capacity((1 << 20) + (1 << 16));
        let mut text = StackText::default();
        for (stack, n) in stacks {
            buf.push_str(text.set(stack, stack.frames().len()));
            let _ = writeln!(buf, " {n}");
            if buf.len() >= 1 << 20 {
                f.write_all(buf.as_bytes())?;
                buf.clear();
            }
        }
        f.write_all(buf.as_bytes())?;
        written.push(p);
    }
    if let Some(p) = svg {
        let p = phase_path(p, phase_name);
        let count: u64 = stacks.values().sum();
        let mut opts = inferno::flamegraph::Options::default();
        opts.title = format!("{title} — {phase_name}, {count} {}", folded.unit_name());
        opts.count_name = folded.unit_name().to_string();
        let mut f = std::io::BufWriter::new(std::fs::File::create(&p)?);
        svg_of(stacks, &mut opts, &mut f)?;
        f.flush()?;
        written.push(p);
    }
    Ok(written)
}

/// The files of a profile without a single sample: an empty folded file and an SVG that says so
/// (and why, in `reason`), so `--flamegraph`/`--folded` never end a run with nothing written.
pub fn write_empty(
    svg: Option<&Path>,
    folded_path: Option<&Path>,
    title: &str,
    reason: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    if let Some(p) = folded_path {
        std::fs::write(p, "")?;
        written.push(p.to_path_buf());
    }
    if let Some(p) = svg {
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let text = format!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n\
             <svg version=\"1.1\" width=\"1200\" height=\"120\" xmlns=\"http://www.w3.org/2000/svg\">\n\
             <rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"#eeeeee\"/>\n\
             <text x=\"600\" y=\"40\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"17\">{}</text>\n\
             <text x=\"600\" y=\"80\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"14\">no samples: {}</text>\n\
             </svg>\n",
            esc(title),
            esc(reason)
        );
        std::fs::write(p, text)?;
        written.push(p.to_path_buf());
    }
    Ok(written)
}

/// Writes one SVG (and folded file) per phase that has samples; returns the files written. A
/// profile without samples gets [`write_empty`]'s files.
///
/// Phases render in parallel, each on a thread of its own: inferno picks frame colours from a
/// thread-local generator that starts at the same seed in every thread, so each SVG comes out the
/// same whatever else was rendered before it.
pub fn write(
    folded: &Folded,
    svg: Option<&Path>,
    folded_path: Option<&Path>,
    title: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    if folded.by_phase.values().all(BTreeMap::is_empty) {
        let reason = format!("0 {} recorded for the target during the run", folded.unit_name());
        return write_empty(svg, folded_path, title, &reason);
    }
    let phases: Vec<(&String, &BTreeMap<Stack, u64>)> = folded.by_phase.iter().collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(phases.len());
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<anyhow::Result<Vec<PathBuf>>>> = (0..phases.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(phase_name, stacks)) = phases.get(i) else { break };
                        // A fresh thread per phase: see above.
                        let r = std::thread::scope(|s| {
                            s.spawn(|| write_phase(folded, phase_name, stacks, svg, folded_path, title)).join()
                        });
                        done.push((
                            i,
                            r.unwrap_or_else(|_| Err(anyhow::anyhow!("writing the {phase_name} flamegraph panicked"))),
                        ));
                    }
                    done
                })
            })
            .collect();
        for w in workers {
            for (i, r) in w.join().unwrap_or_default() {
                results[i] = Some(r);
            }
        }
    });
    let mut written = Vec::new();
    for r in results {
        written.extend(r.unwrap_or_else(|| Err(anyhow::anyhow!("a flamegraph writer panicked")))?);
    }
    Ok(written)
}
