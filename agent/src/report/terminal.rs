//! The terminal report: the latency table, problems found, stages, profiles and the waterfall.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::width::{fit, NARROW};
use super::{Report, RequestJson, NS};

impl Report {
    fn render_offcpu(&self, o: &mut String) {
        let Some(off) = &self.offcpu else { return };
        let _ = writeln!(
            o,
            "
Off-CPU (blocked) time {:.3} s over all threads; where threads blocked:",
            off.samples as f64 / 1e6
        );
        top_table(o, "top blocking functions", off);
    }

    fn render_cpu(&self, o: &mut String) {
        let Some(cpu) = &self.cpu else { return };
        let phases: Vec<String> = cpu
            .by_phase
            .iter()
            .filter(|(p, _)| *p != "all")
            .map(|(p, s)| format!("{p} {}", s.values().sum::<u64>()))
            .collect();
        let _ = writeln!(
            o,
            "\nCPU samples {} ({}); no user stack {:.1}%, truncated stacks {:.1}%{}",
            cpu.samples,
            phases.join(", "),
            pct(cpu.no_user_stack, cpu.samples),
            pct(cpu.truncated, cpu.samples),
            if cpu.truncated_by.is_empty() {
                String::new()
            } else {
                let why: Vec<String> = cpu
                    .truncated_by
                    .iter()
                    .map(|(why, n)| format!("{} {:.1}%", why.replace('_', " "), pct(*n, cpu.samples)))
                    .collect();
                format!(" ({})", why.join(", "))
            }
        );
        top_table(o, "top functions", cpu);
    }

    fn render_stages(&self, o: &mut String, width: usize) {
        let Some(st) = &self.stages else { return };
        if st.summaries.is_empty() {
            let _ = writeln!(o, "\nstages: no probed function was called");
            return;
        }
        let _ = writeln!(
            o,
            "\n{:<16}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>11}{:>11}",
            "stage", "count", "mean", "std", "p50", "p90", "p99", "min", "max", "total", "self"
        );
        for s in &st.summaries {
            let _ = writeln!(
                o,
                "{:<16}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>11}{:>11}",
                s.name,
                s.count,
                ms(s.mean_s),
                ms(s.std_s),
                ms(s.p50_s),
                ms(s.p90_s),
                ms(s.p99_s),
                ms(s.min_s),
                ms(s.max_s),
                ms(s.total_s),
                ms(s.self_s)
            );
        }
        let all_self: f64 = st.summaries.iter().map(|s| s.self_s).sum();
        if all_self > 0.0 {
            let bar_w = width.saturating_sub(34).clamp(10, 60);
            let _ = writeln!(o, "\nwhere probed time goes (self time)");
            for s in &st.summaries {
                let share = s.self_s / all_self;
                let n = (share * bar_w as f64).round() as usize;
                let _ = writeln!(o, "  {:<16}{:<bar_w$} {:>5.1}%", s.name, "█".repeat(n), share * 100.0);
            }
        }
        let shared: u64 = st.attribution.shared.values().map(|v| v.count).sum();
        let outside: u64 = st.attribution.outside.values().map(|v| v.count).sum();
        let _ = writeln!(o, "calls shared by several requests (batches): {shared}; outside any request: {outside}");
        if !st.pending.is_empty() {
            let _ = writeln!(o, "never attached (library not loaded): {}", st.pending.join(", "));
        }
    }

    /// The terminal report: summary table, then a waterfall of the last requests; every line cut
    /// to `width` columns, with a narrow layout below [`NARROW`].
    pub fn render(&self, width: usize, max_rows: usize) -> String {
        fit(&self.render_lines(width, max_rows), width)
    }

    fn render_lines(&self, width: usize, max_rows: usize) -> String {
        let s = self.summary();
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\ninferscope report — pid {} ({}) — {:.1} s, ended by {} — capture: {}",
            self.target.pid,
            self.target.comm,
            s.duration_s,
            s.ended_by,
            match &s.capture.fallback_reason {
                None => s.capture.mode.name().to_string(),
                Some(why) => format!("{} ({why})", s.capture.mode.name()),
            }
        );
        for e in &self.target.execs {
            let _ = writeln!(
                o,
                "pid {} exec'd at {:.1} s: {} → {} ({}); figures after it belong to the new program",
                self.target.pid, e.at_s, e.from_comm, e.comm, e.exe
            );
        }
        if !self.target.workers.is_empty() {
            let pids: Vec<String> = self.target.workers.iter().map(u32::to_string).collect();
            let _ = writeln!(o, "followed with its workers (they serve its listening socket): pid {}", pids.join(", "));
        }
        let _ = writeln!(
            o,
            "requests {} ({} streaming)   chunks/s {:.1}   tokens/s {}   lost events {}",
            s.requests,
            s.streaming_requests,
            s.chunks_per_s,
            s.tokens_per_s.map_or("n/a (not stated by the stream)".into(), |t| format!("{t:.1}")),
            s.lost.lost_total()
        );
        table_row(&mut o, width, "\n", "", ["count", "p50", "p90", "p99", "max", "mean"].map(String::from));
        for (name, d) in (s.requests > 0)
            .then_some([
                ("time to first byte", s.ttfb_s),
                ("time to first token", s.ttft_s),
                ("inter-token latency", s.itl_s),
                ("end-to-end", s.e2e_s),
            ])
            .into_iter()
            .flatten()
        {
            table_row(
                &mut o,
                width,
                "",
                name,
                [d.count.to_string(), ms(d.p50), ms(d.p90), ms(d.p99), ms(d.max), ms(d.mean)],
            );
        }
        if s.decode_chunks_per_s.count > 0 {
            let d = s.decode_chunks_per_s;
            let f = |v: f64| format!("{v:.1}");
            // Content events per second per request, between its first token and its end.
            table_row(
                &mut o,
                width,
                "",
                "decode chunks/s",
                [d.count.to_string(), f(d.p50), f(d.p90), f(d.p99), f(d.max), f(d.mean)],
            );
        }
        if !s.models.is_empty() {
            let narrow = width < NARROW;
            let head = ["count", "ttft p50", "ttft p99", "e2e p50", "e2e p99"].map(String::from);
            model_row(&mut o, narrow, "\n", "per model", &head);
            for m in &s.models {
                let cells =
                    [m.requests.to_string(), ms(m.ttft_s.p50), ms(m.ttft_s.p99), ms(m.e2e_s.p50), ms(m.e2e_s.p99)];
                model_row(&mut o, narrow, "", &m.model, &cells);
            }
            if s.models_folded > 0 {
                let _ = writeln!(o, "{} request(s) counted as `other`: more than --max-models models", s.models_folded);
            }
        }
        let p = &s.parse;
        let problems = p.bad_heads + p.bad_chunks + p.framing_lost + p.unmatched_responses + p.aborted;
        if problems > 0 || s.events.decode_errors > 0 || s.lost.lost_total() > 0 {
            let _ = writeln!(
                o,
                "\nnot measured: lost events {} (reads {}, writes {}), non-HTTP heads {}, bad chunking {}, framing lost {}, responses without request {}, aborted {}, decode errors {}",
                s.lost.lost_total(),
                s.lost.lost_reads,
                s.lost.lost_writes,
                p.bad_heads,
                p.bad_chunks,
                p.framing_lost,
                p.unmatched_responses,
                p.aborted,
                s.events.decode_errors
            );
        }
        if s.events.no_payload > 0 {
            let _ = writeln!(
                o,
                "not captured: {} socket reads/writes of the target had no buffer we can read (io_uring, sendfile, \
                 kernel workers): their lengths count, their bytes (requests, frames) are not seen",
                s.events.no_payload
            );
        }
        super::protocols::render(&mut o, &s, &self.requests);
        self.render_stages(&mut o, width);
        if let Some(py) = &self.py_stages {
            o.push_str(&py.render());
        }
        self.render_cpu(&mut o);
        self.render_offcpu(&mut o);
        if let Some(g) = &self.gpu {
            o.push_str(&g.render());
        }
        o.push_str(&self.waterfall(width, max_rows));
        o
    }

    fn waterfall(&self, width: usize, max_rows: usize) -> String {
        let mut o = String::new();
        if self.requests.is_empty() {
            o.push_str("\nno requests seen\n");
            return o;
        }
        let first_shown = self.requests.len().saturating_sub(max_rows);
        let shown = &self.requests[first_shown..];
        let longest = shown.iter().map(|r| r.end_ns.saturating_sub(r.request_ns)).max().unwrap_or(1).max(1);
        // Narrow: a shorter label and TTFT only after the bar.
        let narrow = width < NARROW;
        let label_w = if narrow { 16 } else { 28 };
        let gpu_w = if self.gpu.as_ref().is_some_and(|g| g.status.enabled) { 12 } else { 0 };
        let suffix_w = if narrow { 10 } else { 34 + gpu_w };
        let bar_w = width.saturating_sub(label_w + suffix_w).clamp(10, 80);
        let _ = writeln!(
            o,
            "\nwaterfall (last {} of {} requests; bar = request → end, scale {} per char)\n  ░ waiting for first byte  ▒ first byte → first token  █ streaming  │ first token",
            shown.len(),
            self.requests.len(),
            ms(longest as f64 / NS / bar_w as f64)
        );
        for (offset, r) in shown.iter().enumerate() {
            let col =
                |t: u64| ((t.saturating_sub(r.request_ns) as f64 / longest as f64) * bar_w as f64).round() as usize;
            let fb = col(r.first_byte_ns).min(bar_w);
            let ft = r.first_token_ns.map(|t| col(t).min(bar_w));
            let end = col(r.end_ns).clamp(1, bar_w);
            let mut bar = String::new();
            for i in 0..bar_w {
                let ch = if i >= end {
                    ' '
                } else if ft == Some(i) {
                    '│'
                } else if i < fb {
                    '░'
                } else if ft.is_some_and(|f| i < f) {
                    '▒'
                } else if ft.is_some() {
                    '█'
                } else {
                    '▒'
                };
                bar.push(ch);
            }
            let mut label = format!("{} {}", r.method, r.path);
            let n = label.chars().count();
            if n > label_w - 1 {
                // Keep the end: it is what tells requests apart (`…/completions/r17`).
                label = "…".to_string() + &label.chars().skip(n - (label_w - 3)).collect::<String>();
            }
            let j = RequestJson::from(r);
            let gpu = self
                .gpu
                .as_ref()
                .filter(|g| g.status.enabled)
                .map_or(String::new(), |g| format!(" {}", g.cell(first_shown + offset)));
            let ttft = j.ttft_s.map_or("-".into(), ms);
            if narrow {
                let _ = writeln!(o, "{label:<label_w$}{bar} {ttft:>9}");
            } else {
                let _ =
                    writeln!(o, "{label:<label_w$}{bar} ttft {ttft:>9} e2e {:>9} {:>4} ch{gpu}", ms(j.e2e_s), r.chunks);
            }
            self.stage_rows(&mut o, first_shown + offset, label_w, bar_w, &col);
        }
        o
    }

    /// Under a request's bar: one row per stage, marking where its calls ran.
    fn stage_rows(&self, o: &mut String, idx: usize, label_w: usize, bar_w: usize, col: &dyn Fn(u64) -> usize) {
        let Some(st) = &self.stages else { return };
        let mut rows: BTreeMap<&str, Vec<char>> = BTreeMap::new();
        for (i, c) in st.calls.iter().enumerate() {
            if st.attribution.call_request.get(i).copied().flatten() != Some(idx) {
                continue;
            }
            let row = rows.entry(st.attribution.call_names[i].as_str()).or_insert_with(|| vec![' '; bar_w]);
            let (a, b) = (col(c.start_ns).min(bar_w - 1), col(c.end_ns).min(bar_w - 1));
            for cell in row.iter_mut().take(b + 1).skip(a) {
                *cell = '▬';
            }
        }
        for (name, row) in rows {
            let _ = writeln!(o, "{:>label_w$}{}", format!("{name} "), row.into_iter().collect::<String>());
        }
    }
}

/// One row of the latency table (count, p50, p90, p99, max, mean): all six from 84 columns
/// on; 10-wide columns from 80; below, count, p50, p99 and max only.
fn table_row(o: &mut String, width: usize, lead: &str, name: &str, cells: [String; 6]) {
    let [c, p50, p90, p99, max, mean] = &cells;
    let _ = if width >= 84 {
        writeln!(o, "{lead}{name:<22}{c:>7}{p50:>11}{p90:>11}{p99:>11}{max:>11}{mean:>11}")
    } else if width >= NARROW {
        writeln!(o, "{lead}{name:<22}{c:>7}{p50:>10}{p90:>10}{p99:>10}{max:>10}{mean:>10}")
    } else {
        writeln!(o, "{lead}{name:<20}{c:>6}{p50:>10}{p99:>10}{max:>10}")
    };
}

/// One row of the per-model table (count, TTFT p50/p99, E2E p50/p99); narrow: count and the
/// two p50s.
fn model_row(o: &mut String, narrow: bool, lead: &str, name: &str, cells: &[String; 5]) {
    let [c, tp50, tp99, ep50, ep99] = cells;
    let _ = if narrow {
        writeln!(o, "{lead}{:<20}{c:>6}{tp50:>10}{ep50:>10}", clip(name, 19))
    } else {
        writeln!(o, "{lead}{:<22}{c:>7}{tp50:>11}{tp99:>11}{ep50:>11}{ep99:>11}", clip(name, 21))
    };
}

/// At most `n` characters, the cut marked with `…`.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n.saturating_sub(1)).collect::<String>() + "…"
    }
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 * 100.0 / b as f64
    }
}

fn ms(s: f64) -> String {
    if s == 0.0 {
        "0".into()
    } else if s < 0.001 {
        format!("{:.0}µs", s * 1e6)
    } else if s < 10.0 {
        format!("{:.2}ms", s * 1e3)
    } else {
        format!("{s:.2}s")
    }
}

/// The top-functions table of a CPU or off-CPU profile (`title` heads its first column).
fn top_table(o: &mut String, title: &str, folded: &crate::profile::Folded) {
    let _ = writeln!(o, "{title:<60}{:>8}{:>8}", "self", "total");
    for (f, s, t) in crate::profile::top_functions(folded, 12) {
        let name: String = if f.chars().count() > 58 { f.chars().take(57).collect::<String>() + "…" } else { f };
        let _ = writeln!(o, "{name:<60}{:>7.1}%{:>7.1}%", s * 100.0, t * 100.0);
    }
}
