//! GPU telemetry: NVML sampled on its own thread into a bounded timeline that joins with request
//! and stage times.
//!
//! * [`GpuTelemetry::start`] loads NVML through nvml-wrapper's loader (the default
//!   `libnvidia-ml.so.1`, or a given path) and either runs or is [`GpuTelemetry::Off`] with one
//!   sentence saying why (no library, no driver, no device). Nothing here is ever fatal.
//! * Every tick records CLOCK_MONOTONIC ns (the clock of `bpf_ktime_get_ns`), per device
//!   utilization, memory, power, temperature, SM clock and throttle reasons, and per process the
//!   frame-buffer use and SM utilization. A failing NVML call is counted by its C name and leaves
//!   only its own fields empty.
//! * [`GpuTelemetry::window`] averages utilization over `[t0, t1]` for the devices a set of
//!   processes uses; [`WindowStats::aggregate`] pools windows per stage or phase, because NVML
//!   utilization is itself an average over 1/6 s to 1 s and says nothing about shorter windows.
//!
//! Tests run against a stand-in `libnvidia-ml.so.1` (`tests/gpu/`), not a GPU.

pub mod join;
mod sampler;
mod timeline;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::Serialize;
use serde_json::{json, Value};

pub use timeline::{GpuSelector, ProcessSample, ProcessWindow, Reading, Timeline, WindowStats};

use sampler::{ErrorLog, Sampler};

/// NVML's default library name (what the driver installs).
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";
/// NVML refreshes utilization every 1/6 s on the fastest GPUs (up to 1 s on others): no window
/// shorter than this has its own utilization figure, however fast we sample.
pub const NVML_MIN_RESOLUTION_NS: u64 = 166_666_667;
/// Devices sampled at most (the window masks are 64-bit).
pub const MAX_DEVICES: u32 = 64;

/// How to run GPU telemetry.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuOptions {
    /// NVML library to load; `None`: the default name, found by the dynamic loader.
    pub library: Option<PathBuf>,
    /// Samples per second.
    pub hz: f64,
    /// Ticks kept in the timeline (all devices of one tick count as one).
    pub timeline_capacity: usize,
}

impl Default for GpuOptions {
    /// The default NVML, 10 Hz, one hour of timeline.
    fn default() -> Self {
        GpuOptions { library: None, hz: 10.0, timeline_capacity: 36_000 }
    }
}

/// Static facts about one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    pub index: u32,
    pub name: Option<String>,
    pub uuid: Option<String>,
    /// Latest total frame-buffer size seen.
    pub fb_total_bytes: Option<u64>,
}

/// One device at the latest tick (`None`: that NVML call failed or is not supported).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceSample {
    pub index: u32,
    pub name: Option<String>,
    pub uuid: Option<String>,
    /// SM utilization, % of time a kernel ran (DCGM_FI_DEV_GPU_UTIL).
    pub util_pct: Option<u32>,
    /// Memory-controller utilization, % (DCGM_FI_DEV_MEM_COPY_UTIL).
    pub mem_util_pct: Option<u32>,
    pub fb_used_bytes: Option<u64>,
    pub fb_total_bytes: Option<u64>,
    pub power_w: Option<f64>,
    pub temp_c: Option<u32>,
    pub sm_clock_hz: Option<u64>,
    /// NVML clocks-throttle-reasons bitmask (0: not throttled).
    pub throttle_reasons: Option<u64>,
}

/// The latest tick, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// CLOCK_MONOTONIC ns of the tick.
    pub t_ns: u64,
    pub devices: Vec<DeviceSample>,
    pub processes: Vec<ProcessSample>,
}

/// Whether telemetry runs, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuStatus {
    pub enabled: bool,
    /// One sentence when off ("GPU telemetry off: ...").
    pub reason: Option<String>,
    pub devices: usize,
    /// The library that was loaded (as given, or the default name).
    pub library: Option<String>,
}

struct State {
    timeline: Timeline,
    info: Vec<DeviceInfo>,
    latest: Option<(u64, Vec<Reading>, Vec<ProcessSample>)>,
    errors: BTreeMap<&'static str, u64>,
}

struct Shared {
    state: Mutex<State>,
    /// CPU time of the sampler thread (CLOCK_THREAD_CPUTIME_ID), updated after every tick.
    cpu_ns: AtomicU64,
    ticks: AtomicU64,
}

/// A running sampler. Dropping it stops the thread.
pub struct Running {
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    period_ns: u64,
    library: String,
    started: Instant,
}

impl Running {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

/// GPU telemetry: sampling, or off with the reason.
pub enum GpuTelemetry {
    Running(Running),
    Off { reason: String },
}

impl std::fmt::Debug for GpuTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuTelemetry::Running(r) => write!(f, "GpuTelemetry::Running({}, {} ns period)", r.library, r.period_ns),
            GpuTelemetry::Off { reason } => write!(f, "GpuTelemetry::Off({reason})"),
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns()` reads.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time of the calling thread, ns.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; both clocks exist on every Linux.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The one sentence for a library that did not load.
fn load_failure(library: Option<&Path>, e: &NvmlError) -> String {
    let not_found = e.to_string().contains("No such file");
    match library {
        None if not_found => {
            format!("GPU telemetry off: {DEFAULT_LIBRARY} not found (no NVIDIA driver on this machine)")
        }
        None => format!("GPU telemetry off: {DEFAULT_LIBRARY} could not be loaded: {e}"),
        Some(p) if not_found => format!("GPU telemetry off: {} not found", p.display()),
        Some(p) => format!("GPU telemetry off: {} could not be loaded: {e}", p.display()),
    }
}

fn init_failure(lib: &str, e: &NvmlError) -> String {
    match e {
        NvmlError::DriverNotLoaded => {
            format!("GPU telemetry off: the NVIDIA driver is not loaded ({lib} loaded, nvmlInit_v2: {e})")
        }
        NvmlError::NoPermission => {
            format!("GPU telemetry off: no permission to talk to the NVIDIA driver (nvmlInit_v2 via {lib}: {e})")
        }
        NvmlError::FailedToLoadSymbol(_) => format!("GPU telemetry off: {lib} is not a usable NVML library ({e})"),
        _ => format!("GPU telemetry off: nvmlInit_v2 via {lib} failed: {e}"),
    }
}

impl GpuTelemetry {
    /// Loads NVML, finds the devices and starts the sampler thread; or says why not.
    pub fn start(opts: GpuOptions) -> GpuTelemetry {
        let off = |reason: String| {
            log::info!("{reason}");
            GpuTelemetry::Off { reason }
        };
        if !(opts.hz.is_finite() && opts.hz > 0.0 && opts.hz <= 1000.0) {
            return off(format!("GPU telemetry off: sampling rate {} Hz is not in (0, 1000]", opts.hz));
        }
        let library = opts.library.as_ref().map_or_else(|| DEFAULT_LIBRARY.to_string(), |p| p.display().to_string());
        let mut builder = Nvml::builder();
        if let Some(p) = &opts.library {
            builder.lib_path(p.as_os_str());
        }
        let nvml = match builder.init() {
            Ok(n) => n,
            Err(e @ NvmlError::LibloadingError(_)) => return off(load_failure(opts.library.as_deref(), &e)),
            Err(e) => return off(init_failure(&library, &e)),
        };
        let mut errors = ErrorLog::default();
        let count = match nvml.device_count() {
            Ok(0) => return off(format!("GPU telemetry off: no NVIDIA GPU (NVML via {library} reports 0 devices)")),
            Ok(n) => n,
            Err(e) => return off(format!("GPU telemetry off: {} via {library} failed: {e}", sampler::C_COUNT)),
        };
        if count > MAX_DEVICES {
            log::warn!("GPU telemetry: {count} devices; sampling the first {MAX_DEVICES}");
        }
        let count = count.min(MAX_DEVICES);
        let info: Vec<DeviceInfo> = (0..count)
            .map(|i| {
                let mut d = DeviceInfo { index: i, ..Default::default() };
                match nvml.device_by_index(i) {
                    Ok(dev) => {
                        d.name = dev.name().map_err(|e| errors.note(sampler::C_NAME, Some(i), &e)).ok();
                        d.uuid = dev.uuid().map_err(|e| errors.note(sampler::C_UUID, Some(i), &e)).ok();
                    }
                    Err(e) => errors.note(sampler::C_HANDLE, Some(i), &e),
                }
                d
            })
            .collect();
        let period = Duration::from_secs_f64(1.0 / opts.hz);
        let period_ns = period.as_nanos() as u64;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                timeline: Timeline::new(count as usize, opts.timeline_capacity),
                info,
                latest: None,
                errors: errors.counts.clone(),
            }),
            cpu_ns: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel::<()>();
        let thread_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("inferscope-gpu".into())
            .spawn(move || sample_loop(nvml, count, period, thread_shared, rx, errors));
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => return off(format!("GPU telemetry off: cannot start the sampler thread: {e}")),
        };
        log::info!("GPU telemetry on: {count} device(s) via {library} at {} Hz", opts.hz);
        GpuTelemetry::Running(Running {
            shared,
            stop: Some(tx),
            thread: Some(thread),
            period_ns,
            library,
            started: Instant::now(),
        })
    }

    fn running(&self) -> Option<&Running> {
        match self {
            GpuTelemetry::Running(r) => Some(r),
            GpuTelemetry::Off { .. } => None,
        }
    }

    pub fn is_running(&self) -> bool {
        self.running().is_some()
    }

    pub fn status(&self) -> GpuStatus {
        match self {
            GpuTelemetry::Running(r) => GpuStatus {
                enabled: true,
                reason: None,
                devices: r.lock().info.len(),
                library: Some(r.library.clone()),
            },
            GpuTelemetry::Off { reason } => {
                GpuStatus { enabled: false, reason: Some(reason.clone()), devices: 0, library: None }
            }
        }
    }

    /// The sampler period, ns (0 when off).
    pub fn sampling_period_ns(&self) -> u64 {
        self.running().map_or(0, |r| r.period_ns)
    }

    /// The shortest window with its own utilization figure: the period, at least NVML's 1/6 s.
    pub fn resolution_ns(&self) -> u64 {
        self.running().map_or(NVML_MIN_RESOLUTION_NS, |r| r.period_ns.max(NVML_MIN_RESOLUTION_NS))
    }

    /// Mean utilization of the selected devices over `[t0_ns, t1_ns]` (CLOCK_MONOTONIC ns).
    pub fn window(&self, sel: &GpuSelector, t0_ns: u64, t1_ns: u64) -> WindowStats {
        match self.running() {
            Some(r) => r.lock().timeline.window(sel, t0_ns, t1_ns, r.period_ns, self.resolution_ns()),
            None => WindowStats {
                span_ns: t1_ns.saturating_sub(t0_ns),
                resolution_ns: NVML_MIN_RESOLUTION_NS,
                ..Default::default()
            },
        }
    }

    /// [`GpuTelemetry::window`] for many windows under one lock.
    pub fn windows(&self, sel: &GpuSelector, spans: &[(u64, u64)]) -> Vec<WindowStats> {
        match self.running() {
            Some(r) => {
                let res = self.resolution_ns();
                let st = r.lock();
                spans.iter().map(|&(a, b)| st.timeline.window(sel, a, b, r.period_ns, res)).collect()
            }
            None => spans.iter().map(|&(a, b)| self.window(sel, a, b)).collect(),
        }
    }

    /// One process's GPU use over `[t0_ns, t1_ns]`.
    pub fn process_window(&self, pid: u32, t0_ns: u64, t1_ns: u64) -> ProcessWindow {
        self.running().map(|r| r.lock().timeline.process_window(pid, t0_ns, t1_ns)).unwrap_or_default()
    }

    /// The latest tick (None when off or before the first tick).
    pub fn latest(&self) -> Option<Snapshot> {
        let r = self.running()?;
        let st = r.lock();
        let (t_ns, readings, procs) = st.latest.as_ref()?;
        let devices = readings
            .iter()
            .zip(&st.info)
            .map(|(r, i)| DeviceSample {
                index: i.index,
                name: i.name.clone(),
                uuid: i.uuid.clone(),
                util_pct: r.util_pct,
                mem_util_pct: r.mem_util_pct,
                fb_used_bytes: r.fb_used_bytes,
                fb_total_bytes: r.fb_total_bytes,
                power_w: r.power_mw.map(|mw| f64::from(mw) / 1000.0),
                temp_c: r.temp_c,
                sm_clock_hz: r.sm_mhz.map(|m| u64::from(m) * 1_000_000),
                throttle_reasons: r.throttle_reasons,
            })
            .collect();
        Some(Snapshot { t_ns: *t_ns, devices, processes: procs.clone() })
    }

    /// Failed NVML calls by C function name.
    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.running().map(|r| r.lock().errors.clone()).unwrap_or_default()
    }

    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.running().map(|r| r.lock().info.clone()).unwrap_or_default()
    }

    /// Ticks in the timeline now.
    pub fn timeline_len(&self) -> usize {
        self.running().map_or(0, |r| r.lock().timeline.len())
    }

    /// Ticks the timeline capacity pushed out.
    pub fn dropped_samples(&self) -> u64 {
        self.running().map_or(0, |r| r.lock().timeline.dropped())
    }

    /// Ticks taken since start.
    pub fn ticks(&self) -> u64 {
        self.running().map_or(0, |r| r.shared.ticks.load(Ordering::Relaxed))
    }

    /// CPU time the sampler thread has used (its CLOCK_THREAD_CPUTIME_ID), ns.
    pub fn sampler_cpu_ns(&self) -> u64 {
        self.running().map_or(0, |r| r.shared.cpu_ns.load(Ordering::Relaxed))
    }

    /// Wall time since start, ns (the denominator for `sampler_cpu_ns`).
    pub fn running_ns(&self) -> u64 {
        self.running().map_or(0, |r| r.started.elapsed().as_nanos() as u64)
    }

    /// Bytes the timeline holds (its rings' allocations; the latest tick and device names add
    /// well under a KiB per device).
    pub fn memory_bytes(&self) -> usize {
        self.running().map_or(0, |r| {
            let st = r.lock();
            st.timeline.memory_bytes()
                + std::mem::size_of::<State>()
                + st.info.len() * (std::mem::size_of::<DeviceInfo>() + 2 * 96 + std::mem::size_of::<Reading>())
                + st.latest.as_ref().map_or(0, |l| l.2.capacity() * std::mem::size_of::<ProcessSample>())
        })
    }

    /// The timeline for the attach JSON: status, devices, errors and column arrays.
    pub fn timeline_json(&self) -> Value {
        match self {
            GpuTelemetry::Off { reason } => json!({"enabled": false, "reason": reason}),
            GpuTelemetry::Running(r) => {
                let st = r.lock();
                let mut v = st.timeline.to_json();
                v["enabled"] = json!(true);
                v["library"] = json!(r.library);
                v["sampling_period_ns"] = json!(r.period_ns);
                v["resolution_ns"] = json!(r.period_ns.max(NVML_MIN_RESOLUTION_NS));
                v["clock"] = json!("CLOCK_MONOTONIC");
                v["devices"] = json!(st.info);
                v["errors"] = json!(st.errors);
                v["sampler_cpu_ns"] = json!(r.shared.cpu_ns.load(Ordering::Relaxed));
                v
            }
        }
    }

    /// Stops sampling (joins the thread, shuts NVML down) and keeps the timeline for queries.
    pub fn stop_sampling(&mut self) {
        if let GpuTelemetry::Running(r) = self {
            r.halt();
        }
    }

    /// Stops sampling and drops everything.
    pub fn stop(self) {
        drop(self);
    }
}

fn sample_loop(
    nvml: Nvml,
    count: u32,
    period: Duration,
    shared: Arc<Shared>,
    stop: mpsc::Receiver<()>,
    mut errors: ErrorLog,
) {
    let mut readings = Vec::with_capacity(count as usize);
    let mut procs = Vec::new();
    {
        let mut sampler = Sampler::new(&nvml, count, period.as_micros() as u64, &mut errors);
        let mut next = Instant::now();
        loop {
            let t_ns = monotonic_ns();
            sampler.sample(&mut readings, &mut procs, &mut errors);
            {
                let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                st.timeline.push(t_ns, &readings, &procs);
                for (info, r) in st.info.iter_mut().zip(&readings) {
                    if r.fb_total_bytes.is_some() {
                        info.fb_total_bytes = r.fb_total_bytes;
                    }
                }
                if st.errors != errors.counts {
                    st.errors.clone_from(&errors.counts);
                }
                match &mut st.latest {
                    Some(l) => {
                        l.0 = t_ns;
                        l.1.clone_from(&readings);
                        l.2.clone_from(&procs);
                    }
                    None => st.latest = Some((t_ns, readings.clone(), procs.clone())),
                }
            }
            shared.ticks.fetch_add(1, Ordering::Relaxed);
            shared.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
            // Fixed schedule; after a stall, skip the missed ticks instead of bursting.
            next += period;
            let now = Instant::now();
            if next < now {
                next = now;
            }
            match stop.recv_timeout(next - now) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }
    if let Err(e) = nvml.shutdown() {
        errors.note(sampler::C_SHUTDOWN, None, &e);
    }
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    st.errors.clone_from(&errors.counts);
    drop(st);
    shared.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_off_with_the_path() {
        let p = PathBuf::from("/nonexistent/inferscope-test/libnvidia-ml.so.1");
        let t = GpuTelemetry::start(GpuOptions { library: Some(p.clone()), ..Default::default() });
        let GpuTelemetry::Off { reason } = &t else { panic!("{t:?}") };
        assert!(reason.starts_with("GPU telemetry off: "), "{reason}");
        assert!(reason.contains(&p.display().to_string()), "{reason}");
        let s = t.status();
        assert!(!s.enabled && s.reason.as_deref() == Some(reason.as_str()));
        assert_eq!(t.timeline_json()["enabled"], json!(false));
        assert_eq!(t.window(&GpuSelector::All, 0, 1_000_000_000).mean_util, None);
        assert!(t.latest().is_none() && t.errors().is_empty());
    }

    #[test]
    fn a_file_that_is_not_nvml_is_off() {
        // A real shared object without NVML's symbols: libc.
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/usr/lib/libc.so.6"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let Some(p) = libc else { return };
        let t = GpuTelemetry::start(GpuOptions { library: Some(p), ..Default::default() });
        let GpuTelemetry::Off { reason } = &t else { panic!("{t:?}") };
        assert!(reason.contains("not a usable NVML library"), "{reason}");
    }

    #[test]
    fn bad_rate_is_off() {
        let t = GpuTelemetry::start(GpuOptions { hz: 0.0, ..Default::default() });
        assert!(!t.is_running());
    }

    #[test]
    fn clocks_are_monotonic_and_thread_cpu() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
        assert!(thread_cpu_ns() > 0);
    }
}
