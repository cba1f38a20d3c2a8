//! The GPU timeline: one entry per sampler tick, stored compactly in bounded rings, and the window
//! queries that join it with request and stage times (CLOCK_MONOTONIC ns, as `bpf_ktime_get_ns`).
//!
//! Storage per tick: 16 bytes of header, 20 bytes per device, 12 bytes per process entry. Absent
//! values (a call failed or is not supported) are stored as the type's maximum and come back as
//! `None`; memory sizes are kept in KiB (u32: up to 4 TiB per device).

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use serde_json::{json, Value};

/// One device's values at one tick, as read (`None`: the call failed or is not supported).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    pub util_pct: Option<u32>,
    pub mem_util_pct: Option<u32>,
    pub fb_used_bytes: Option<u64>,
    pub fb_total_bytes: Option<u64>,
    pub power_mw: Option<u32>,
    pub temp_c: Option<u32>,
    pub sm_mhz: Option<u32>,
    pub throttle_reasons: Option<u64>,
}

/// One process on one GPU at one tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProcessSample {
    /// As NVML reports it: the host PID namespace.
    pub pid: u32,
    pub gpu: u32,
    pub fb_used_bytes: Option<u64>,
    /// From NVML's process utilization samples (mean of those since the previous tick); `None`
    /// when the process had none (idle) or the device does not support them.
    pub sm_util_pct: Option<u32>,
    pub mem_util_pct: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PackedDevice {
    fb_used_kib: u32,
    power_mw: u32,
    throttle: u32,
    sm_mhz: u16,
    util: u8,
    mem_util: u8,
    temp_c: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PackedProc {
    pid: u32,
    fb_used_kib: u32,
    gpu: u8,
    sm: u8,
    mem: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tick {
    t_ns: u64,
    /// Absolute (wrapping) index of this tick's first process entry.
    proc_start: u32,
    nproc: u16,
}

fn pack_u8(v: Option<u32>) -> u8 {
    v.map_or(u8::MAX, |v| v.min(u32::from(u8::MAX - 1)) as u8)
}
fn unpack_u8(v: u8) -> Option<u32> {
    (v != u8::MAX).then_some(u32::from(v))
}
fn pack_kib(v: Option<u64>) -> u32 {
    v.map_or(u32::MAX, |b| (b.div_ceil(1024)).min(u64::from(u32::MAX - 1)) as u32)
}
fn unpack_kib(v: u32) -> Option<u64> {
    (v != u32::MAX).then_some(u64::from(v) * 1024)
}
fn pack_u32(v: Option<u64>) -> u32 {
    v.map_or(u32::MAX, |v| v.min(u64::from(u32::MAX - 1)) as u32)
}
fn unpack_u32(v: u32) -> Option<u64> {
    (v != u32::MAX).then_some(u64::from(v))
}

impl PackedDevice {
    fn pack(r: &Reading) -> Self {
        PackedDevice {
            fb_used_kib: pack_kib(r.fb_used_bytes),
            power_mw: pack_u32(r.power_mw.map(u64::from)),
            // Defined NVML reasons are all below bit 10; higher bits are kept as far as 31.
            throttle: pack_u32(r.throttle_reasons.map(|t| t & 0x7fff_ffff)),
            sm_mhz: r.sm_mhz.map_or(u16::MAX, |v| v.min(u32::from(u16::MAX - 1)) as u16),
            util: pack_u8(r.util_pct),
            mem_util: pack_u8(r.mem_util_pct),
            temp_c: pack_u8(r.temp_c),
        }
    }
    fn util(&self) -> Option<u32> {
        unpack_u8(self.util)
    }
    fn mem_util(&self) -> Option<u32> {
        unpack_u8(self.mem_util)
    }
}

impl PackedProc {
    fn pack(p: &ProcessSample) -> Self {
        PackedProc {
            pid: p.pid,
            fb_used_kib: pack_kib(p.fb_used_bytes),
            gpu: p.gpu.min(u32::from(u8::MAX)) as u8,
            sm: pack_u8(p.sm_util_pct),
            mem: pack_u8(p.mem_util_pct),
        }
    }
}

/// Which GPUs a window query averages over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelector {
    /// Every device.
    All,
    /// These NVML device indices.
    Gpus(Vec<u32>),
    /// The devices these processes use: those whose compute process list shows one of them near
    /// the window (else anywhere in the timeline); all devices when none does.
    Pids(Vec<u32>),
}

/// GPU utilization over one time window (or, from [`WindowStats::aggregate`], over several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WindowStats {
    /// Sampler ticks inside the window(s).
    pub samples: usize,
    /// Mean SM utilization (NVML "gpu" utilization), %, over the ticks and selected devices.
    pub mean_util: Option<f64>,
    /// Mean memory-controller utilization, %.
    pub mean_mem_util: Option<f64>,
    /// Ticks that contributed to `mean_util` / `mean_mem_util` (weights for aggregation).
    pub util_samples: usize,
    pub mem_util_samples: usize,
    /// Length of the window (sum of lengths for an aggregate), ns.
    pub span_ns: u64,
    /// The sampler's period.
    pub sampling_period_ns: u64,
    /// The finest time NVML utilization resolves: the sampler period, but never less than
    /// NVML's own update period (1/6 s on the fastest GPUs).
    pub resolution_ns: u64,
    /// False when the window is shorter than two `resolution_ns` or has fewer than two samples:
    /// print "too short for NVML's sampling period", not the number.
    pub reliable: bool,
    /// Bit `i` set: device `i` was averaged.
    pub gpu_mask: u64,
    /// For [`GpuSelector::Pids`]: the processes were found in a process list (false: all
    /// devices were used as the fallback).
    pub pid_matched: bool,
}

impl WindowStats {
    fn finish(&mut self, util_sum: f64, mem_sum: f64) {
        self.mean_util = (self.util_samples > 0).then(|| util_sum / self.util_samples as f64);
        self.mean_mem_util = (self.mem_util_samples > 0).then(|| mem_sum / self.mem_util_samples as f64);
        self.reliable = self.samples >= 2 && self.span_ns >= 2 * self.resolution_ns && self.mean_util.is_some();
    }

    /// Pools several windows (one stage's calls, all requests' prefill windows ...): the mean of
    /// all samples that fell inside any of them. Each sample stands for one sampling period of
    /// time, so this weights every window by its length; unlike averaging per-window means it
    /// does not over-weight long windows among short ones that caught no sample. Reliable when
    /// the windows together span two resolution periods and hold two samples.
    pub fn aggregate<'a>(windows: impl IntoIterator<Item = &'a WindowStats>) -> WindowStats {
        let mut out = WindowStats::default();
        let (mut util_sum, mut mem_sum) = (0.0, 0.0);
        for w in windows {
            out.samples += w.samples;
            out.util_samples += w.util_samples;
            out.mem_util_samples += w.mem_util_samples;
            util_sum += w.mean_util.unwrap_or(0.0) * w.util_samples as f64;
            mem_sum += w.mean_mem_util.unwrap_or(0.0) * w.mem_util_samples as f64;
            out.span_ns = out.span_ns.saturating_add(w.span_ns);
            out.sampling_period_ns = out.sampling_period_ns.max(w.sampling_period_ns);
            out.resolution_ns = out.resolution_ns.max(w.resolution_ns);
            out.gpu_mask |= w.gpu_mask;
            out.pid_matched |= w.pid_matched;
        }
        out.finish(util_sum, mem_sum);
        out
    }
}

/// One process's GPU use over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcessWindow {
    /// Ticks in the window at which the process was in some device's process list.
    pub samples: usize,
    /// Bit `i`: seen on device `i`.
    pub gpu_mask: u64,
    /// Mean SM utilization over its (tick, device) utilization samples.
    pub mean_sm_util: Option<f64>,
    /// Highest frame-buffer use (summed over its devices at one tick).
    pub max_fb_used_bytes: Option<u64>,
}

/// Bounded ring of ticks: at most `capacity` ticks and `proc_capacity` process entries; the
/// oldest ticks go first and are counted in `dropped`.
#[derive(Debug)]
pub struct Timeline {
    ndev: usize,
    capacity: usize,
    proc_capacity: usize,
    ticks: VecDeque<Tick>,
    devs: VecDeque<PackedDevice>,
    procs: VecDeque<PackedProc>,
    proc_base: u32,
    proc_next: u32,
    dropped: u64,
    procs_not_kept: u64,
}

/// Process entries kept per tick (the rest are counted in `procs_not_kept`).
pub const MAX_PROCS_PER_TICK: usize = 1024;
/// Process entries kept over the whole ring, per tick of capacity.
pub const PROC_ENTRIES_PER_TICK: usize = 16;

/// Grows a ring by doubling, never past `max` elements of capacity.
fn reserve_bounded<T>(q: &mut VecDeque<T>, extra: usize, max: usize) {
    let need = q.len() + extra;
    if need > q.capacity() {
        let want = (q.capacity().max(8) * 2).min(max).max(need);
        q.reserve_exact(want - q.len());
    }
}

impl Timeline {
    pub fn new(ndev: usize, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Timeline {
            ndev,
            capacity,
            proc_capacity: capacity.saturating_mul(PROC_ENTRIES_PER_TICK).max(MAX_PROCS_PER_TICK),
            ticks: VecDeque::new(),
            devs: VecDeque::new(),
            procs: VecDeque::new(),
            proc_base: 0,
            proc_next: 0,
            dropped: 0,
            procs_not_kept: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.ticks.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ticks.is_empty()
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    pub fn devices(&self) -> usize {
        self.ndev
    }
    /// Ticks the capacity pushed out.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
    /// Process entries not kept because one tick had more than [`MAX_PROCS_PER_TICK`].
    pub fn procs_not_kept(&self) -> u64 {
        self.procs_not_kept
    }

    /// Bytes held by the rings (their allocated capacity).
    pub fn memory_bytes(&self) -> usize {
        self.ticks.capacity() * std::mem::size_of::<Tick>()
            + self.devs.capacity() * std::mem::size_of::<PackedDevice>()
            + self.procs.capacity() * std::mem::size_of::<PackedProc>()
    }

    /// Bytes the rings hold when full: `capacity` ticks, each with `procs_per_tick` processes.
    pub fn full_memory_bytes(ndev: usize, capacity: usize, procs_per_tick: usize) -> usize {
        let procs =
            (capacity * procs_per_tick).min(capacity.saturating_mul(PROC_ENTRIES_PER_TICK).max(MAX_PROCS_PER_TICK));
        capacity * (std::mem::size_of::<Tick>() + ndev * std::mem::size_of::<PackedDevice>())
            + procs * std::mem::size_of::<PackedProc>()
    }

    fn pop_front(&mut self) {
        if let Some(t) = self.ticks.pop_front() {
            self.devs.drain(..self.ndev.min(self.devs.len()));
            let n = usize::from(t.nproc).min(self.procs.len());
            self.procs.drain(..n);
            self.proc_base = self.proc_base.wrapping_add(n as u32);
            self.dropped += 1;
        }
    }

    /// Appends one tick. `readings` has one entry per device (missing ones count as all-absent).
    pub fn push(&mut self, t_ns: u64, readings: &[Reading], procs: &[ProcessSample]) {
        let nproc = procs.len().min(MAX_PROCS_PER_TICK);
        self.procs_not_kept += (procs.len() - nproc) as u64;
        while self.ticks.len() >= self.capacity
            || (!self.ticks.is_empty() && self.procs.len() + nproc > self.proc_capacity)
        {
            self.pop_front();
        }
        reserve_bounded(&mut self.ticks, 1, self.capacity);
        reserve_bounded(&mut self.devs, self.ndev, self.capacity * self.ndev);
        if nproc > 0 {
            reserve_bounded(&mut self.procs, nproc, self.proc_capacity);
        }
        self.ticks.push_back(Tick { t_ns, proc_start: self.proc_next, nproc: nproc as u16 });
        for d in 0..self.ndev {
            let r = readings.get(d).copied().unwrap_or_default();
            self.devs.push_back(PackedDevice::pack(&r));
        }
        for p in &procs[..nproc] {
            self.procs.push_back(PackedProc::pack(p));
        }
        self.proc_next = self.proc_next.wrapping_add(nproc as u32);
    }

    fn tick_devs(&self, i: usize) -> impl Iterator<Item = &PackedDevice> {
        self.devs.range(i * self.ndev..(i + 1) * self.ndev)
    }

    fn tick_procs(&self, i: usize) -> impl Iterator<Item = &PackedProc> {
        let t = &self.ticks[i];
        let start = t.proc_start.wrapping_sub(self.proc_base) as usize;
        let end = (start + usize::from(t.nproc)).min(self.procs.len());
        self.procs.range(start.min(end)..end)
    }

    /// Tick indices with `t0 <= t_ns <= t1`.
    fn range(&self, t0: u64, t1: u64) -> std::ops::Range<usize> {
        let a = self.ticks.partition_point(|t| t.t_ns < t0);
        let b = self.ticks.partition_point(|t| t.t_ns <= t1);
        a..b.max(a)
    }

    fn all_mask(&self) -> u64 {
        if self.ndev >= 64 {
            u64::MAX
        } else {
            (1u64 << self.ndev) - 1
        }
    }

    /// Devices where any of `pids` shows up in the process list within `[t0, t1]` widened by
    /// `slack` on each side, else anywhere in the timeline.
    fn pid_mask(&self, pids: &[u32], t0: u64, t1: u64, slack: u64) -> u64 {
        let scan = |r: std::ops::Range<usize>| {
            let mut mask = 0u64;
            for i in r {
                for p in self.tick_procs(i) {
                    if pids.contains(&p.pid) && p.gpu < 64 {
                        mask |= 1 << p.gpu;
                    }
                }
            }
            mask
        };
        match scan(self.range(t0.saturating_sub(slack), t1.saturating_add(slack))) {
            0 => scan(0..self.ticks.len()),
            m => m,
        }
    }

    /// Mean utilization over the selected devices and the ticks inside `[t0_ns, t1_ns]`.
    pub fn window(&self, sel: &GpuSelector, t0_ns: u64, t1_ns: u64, period_ns: u64, resolution_ns: u64) -> WindowStats {
        let mut out = WindowStats {
            span_ns: t1_ns.saturating_sub(t0_ns),
            sampling_period_ns: period_ns,
            resolution_ns,
            ..Default::default()
        };
        let (mask, matched) = match sel {
            GpuSelector::All => (self.all_mask(), false),
            GpuSelector::Gpus(g) => {
                (g.iter().filter(|&&g| g < 64).fold(0u64, |m, &g| m | 1 << g) & self.all_mask(), false)
            }
            GpuSelector::Pids(p) => match self.pid_mask(p, t0_ns, t1_ns, resolution_ns) {
                0 => (self.all_mask(), false),
                m => (m & self.all_mask(), true),
            },
        };
        out.gpu_mask = mask;
        out.pid_matched = matched;
        let (mut util_sum, mut mem_sum) = (0.0, 0.0);
        for i in self.range(t0_ns, t1_ns) {
            out.samples += 1;
            let (mut u, mut un, mut m, mut mn) = (0u32, 0u32, 0u32, 0u32);
            for (d, dev) in self.tick_devs(i).enumerate() {
                if d >= 64 || mask & (1 << d) == 0 {
                    continue;
                }
                if let Some(v) = dev.util() {
                    u += v;
                    un += 1;
                }
                if let Some(v) = dev.mem_util() {
                    m += v;
                    mn += 1;
                }
            }
            if un > 0 {
                util_sum += f64::from(u) / f64::from(un);
                out.util_samples += 1;
            }
            if mn > 0 {
                mem_sum += f64::from(m) / f64::from(mn);
                out.mem_util_samples += 1;
            }
        }
        out.finish(util_sum, mem_sum);
        out
    }

    /// One process's GPU use over the ticks inside `[t0_ns, t1_ns]`.
    pub fn process_window(&self, pid: u32, t0_ns: u64, t1_ns: u64) -> ProcessWindow {
        let mut out = ProcessWindow::default();
        let (mut sm_sum, mut sm_n) = (0u64, 0u64);
        for i in self.range(t0_ns, t1_ns) {
            let mut seen = false;
            let mut fb: Option<u64> = None;
            for p in self.tick_procs(i).filter(|p| p.pid == pid) {
                seen = true;
                if p.gpu < 64 {
                    out.gpu_mask |= 1 << p.gpu;
                }
                if let Some(s) = unpack_u8(p.sm) {
                    sm_sum += u64::from(s);
                    sm_n += 1;
                }
                if let Some(b) = unpack_kib(p.fb_used_kib) {
                    fb = Some(fb.unwrap_or(0) + b);
                }
            }
            out.samples += usize::from(seen);
            if let Some(b) = fb {
                out.max_fb_used_bytes = Some(out.max_fb_used_bytes.unwrap_or(0).max(b));
            }
        }
        out.mean_sm_util = (sm_n > 0).then(|| sm_sum as f64 / sm_n as f64);
        out
    }

    /// The timeline as column arrays (one per field and device; `null` where absent).
    pub fn to_json(&self) -> Value {
        let n = self.ticks.len();
        let t_ns: Vec<u64> = self.ticks.iter().map(|t| t.t_ns).collect();
        let mut gpus = Vec::with_capacity(self.ndev);
        for d in 0..self.ndev {
            let col = |f: &dyn Fn(&PackedDevice) -> Value| -> Vec<Value> {
                (0..n).map(|i| f(&self.devs[i * self.ndev + d])).collect()
            };
            gpus.push(json!({
                "index": d,
                "util_pct": col(&|p| json!(p.util())),
                "mem_util_pct": col(&|p| json!(p.mem_util())),
                "fb_used_bytes": col(&|p| json!(unpack_kib(p.fb_used_kib))),
                "power_w": col(&|p| json!(unpack_u32(p.power_mw).map(|mw| mw as f64 / 1000.0))),
                "temp_c": col(&|p| json!(unpack_u8(p.temp_c))),
                "sm_clock_mhz": col(&|p| json!((p.sm_mhz != u16::MAX).then_some(p.sm_mhz))),
                "throttle_reasons": col(&|p| json!(unpack_u32(p.throttle))),
            }));
        }
        // Processes as one series per (pid, gpu): they come and go.
        type Series = (Vec<u64>, Vec<Option<u64>>, Vec<Option<u32>>);
        let mut series: BTreeMap<(u32, u8), Series> = BTreeMap::new();
        for i in 0..n {
            for p in self.tick_procs(i) {
                let s = series.entry((p.pid, p.gpu)).or_default();
                s.0.push(self.ticks[i].t_ns);
                s.1.push(unpack_kib(p.fb_used_kib));
                s.2.push(unpack_u8(p.sm));
            }
        }
        let processes: Vec<Value> = series
            .into_iter()
            .map(|((pid, gpu), (t, fb, sm))| json!({"pid": pid, "gpu": gpu, "t_ns": t, "fb_used_bytes": fb, "sm_util_pct": sm}))
            .collect();
        json!({
            "samples": n,
            "capacity": self.capacity,
            "dropped_samples": self.dropped,
            "process_entries_not_kept": self.procs_not_kept,
            "t_ns": t_ns,
            "gpus": gpus,
            "processes": processes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn reading(util: u32) -> Reading {
        Reading {
            util_pct: Some(util),
            mem_util_pct: Some(util / 2),
            fb_used_bytes: Some(3 << 30),
            fb_total_bytes: Some(8 << 30),
            power_mw: Some(250_000),
            temp_c: Some(60),
            sm_mhz: Some(1980),
            throttle_reasons: Some(4),
        }
    }

    /// Two devices sampled every 50 ms for 2 s: device 0 at 80 % for the first second, then
    /// 20 %; device 1 at 10 % throughout. Pid 7 on device 0 only.
    fn scripted() -> Timeline {
        let mut tl = Timeline::new(2, 1000);
        for k in 0..=40u64 {
            let t = k * 50 * MS;
            let u0 = if t < 1000 * MS { 80 } else { 20 };
            let procs = [ProcessSample {
                pid: 7,
                gpu: 0,
                fb_used_bytes: Some(1 << 30),
                sm_util_pct: Some(u0 - 5),
                mem_util_pct: None,
            }];
            tl.push(t, &[reading(u0), reading(10)], &procs);
        }
        tl
    }

    #[test]
    fn pack_roundtrip_and_absent_fields() {
        let r = reading(55);
        let p = PackedDevice::pack(&r);
        assert_eq!(p.util(), Some(55));
        assert_eq!(unpack_kib(p.fb_used_kib), Some(3 << 30));
        assert_eq!(unpack_u32(p.power_mw), Some(250_000));
        let none = PackedDevice::pack(&Reading::default());
        assert_eq!((none.util(), unpack_kib(none.fb_used_kib), unpack_u32(none.power_mw)), (None, None, None));
        assert_eq!(std::mem::size_of::<PackedDevice>(), 20);
        assert_eq!(std::mem::size_of::<PackedProc>(), 12);
        assert_eq!(std::mem::size_of::<Tick>(), 16);
    }

    #[test]
    fn window_means_follow_the_script() {
        let tl = scripted();
        let (p, r) = (50 * MS, 166 * MS);
        let w = tl.window(&GpuSelector::Gpus(vec![0]), 100 * MS, 900 * MS, p, r);
        assert_eq!(w.samples, 17);
        assert_eq!(w.mean_util, Some(80.0));
        assert_eq!(w.mean_mem_util, Some(40.0));
        assert!(w.reliable);
        let w = tl.window(&GpuSelector::All, 1100 * MS, 1900 * MS, p, r);
        assert_eq!(w.mean_util, Some(15.0)); // (20 + 10) / 2
                                             // Straddling the switch: 10 ticks at 80 (500..950) and 11 at 20 (1000..1500).
        let w = tl.window(&GpuSelector::Gpus(vec![0]), 500 * MS, 1500 * MS, p, r);
        assert_eq!(w.samples, 21);
        assert!((w.mean_util.expect("util") - (10.0 * 80.0 + 11.0 * 20.0) / 21.0).abs() < 1e-9);
    }

    #[test]
    fn short_windows_are_flagged_unreliable() {
        let tl = scripted();
        let w = tl.window(&GpuSelector::All, 100 * MS, 160 * MS, 50 * MS, 166 * MS);
        assert!(!w.reliable, "{w:?}");
        let empty = tl.window(&GpuSelector::All, 101 * MS, 120 * MS, 50 * MS, 166 * MS);
        assert_eq!((empty.samples, empty.mean_util, empty.reliable), (0, None, false));
    }

    #[test]
    fn pids_select_their_devices_with_fallback() {
        let tl = scripted();
        let w = tl.window(&GpuSelector::Pids(vec![7]), 100 * MS, 900 * MS, 50 * MS, 166 * MS);
        assert_eq!((w.gpu_mask, w.pid_matched, w.mean_util), (0b01, true, Some(80.0)));
        let w = tl.window(&GpuSelector::Pids(vec![99]), 100 * MS, 900 * MS, 50 * MS, 166 * MS);
        assert_eq!((w.gpu_mask, w.pid_matched, w.mean_util), (0b11, false, Some(45.0)));
        let pw = tl.process_window(7, 100 * MS, 900 * MS);
        assert_eq!(
            (pw.samples, pw.gpu_mask, pw.mean_sm_util, pw.max_fb_used_bytes),
            (17, 1, Some(75.0), Some(1 << 30))
        );
        assert_eq!(tl.process_window(99, 0, u64::MAX).samples, 0);
    }

    #[test]
    fn aggregate_pools_samples_of_short_windows() {
        let tl = scripted();
        let (p, r) = (50 * MS, 166 * MS);
        // Twenty 60 ms windows in the first second: each alone is too short.
        let ws: Vec<_> = (0..20u64)
            .map(|k| tl.window(&GpuSelector::Gpus(vec![0]), k * 50 * MS, k * 50 * MS + 20 * MS, p, r))
            .collect();
        assert!(ws.iter().all(|w| !w.reliable));
        let agg = WindowStats::aggregate(&ws);
        assert_eq!(agg.samples, 20);
        assert_eq!(agg.mean_util, Some(80.0));
        assert!(agg.reliable, "{agg:?}");
        // Empty windows contribute nothing rather than zeros.
        let with_empty = WindowStats::aggregate(ws.iter().chain([&WindowStats::default()]));
        assert_eq!(with_empty.mean_util, Some(80.0));
    }

    #[test]
    fn ring_is_bounded_and_counts_drops() {
        let mut tl = Timeline::new(1, 10);
        let procs = [ProcessSample { pid: 1, gpu: 0, ..Default::default() }];
        for k in 0..25u64 {
            tl.push(k, &[reading(50)], &procs);
        }
        assert_eq!((tl.len(), tl.dropped()), (10, 15));
        assert!(tl.memory_bytes() <= 10 * (16 + 20) + 1024 * 12, "{}", tl.memory_bytes());
        // The surviving ticks still find their own process entries.
        assert_eq!(tl.process_window(1, 15, 24).samples, 10);
        assert_eq!(tl.window(&GpuSelector::All, 0, 14, 1, 1).samples, 0);
    }

    /// The figure BENCHMARKS.md quotes: 1 h at 10 Hz, 8 GPUs, two processes per GPU, filled for
    /// real and measured from the rings' allocations.
    #[test]
    fn memory_for_one_hour_at_10hz_with_8_gpus() {
        let cap = 36_000;
        let mut tl = Timeline::new(8, cap);
        let readings = [reading(50); 8];
        let procs: Vec<ProcessSample> = (0..16)
            .map(|i| ProcessSample {
                pid: 100 + i,
                gpu: i % 8,
                fb_used_bytes: Some(1 << 30),
                sm_util_pct: Some(40),
                mem_util_pct: None,
            })
            .collect();
        for k in 0..(cap as u64 + 100) {
            tl.push(k * 100 * MS, &readings, &procs);
        }
        assert_eq!((tl.len(), tl.dropped()), (cap, 100));
        let bytes = tl.memory_bytes();
        let full = Timeline::full_memory_bytes(8, cap, 16);
        eprintln!("GPU timeline, 1 h at 10 Hz, 8 GPUs, 16 processes: {bytes} bytes allocated ({full} computed)");
        assert_eq!(bytes, full, "rings grow to exactly their bound");
        assert!(bytes < 16 << 20, "{bytes}");
        let no_procs = Timeline::full_memory_bytes(8, cap, 0);
        let one = Timeline::full_memory_bytes(1, cap, 1);
        eprintln!("  without processes: {no_procs} bytes; 1 GPU with 1 process: {one} bytes");
        assert!(no_procs < 7 << 20, "{no_procs}");
    }

    #[test]
    fn json_has_column_arrays() {
        let tl = scripted();
        let j = tl.to_json();
        assert_eq!(j["t_ns"].as_array().map(Vec::len), Some(41));
        assert_eq!(j["gpus"][0]["util_pct"][0], json!(80));
        assert_eq!(j["gpus"][1]["power_w"][0], json!(250.0));
        assert_eq!(j["processes"][0]["pid"], json!(7));
        assert_eq!(j["processes"][0]["fb_used_bytes"][0], json!(1u64 << 30));
    }
}
