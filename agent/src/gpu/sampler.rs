//! One NVML read of every device per tick. Each call that fails is counted under its NVML C name
//! and leaves only its own fields empty; a call a device does not support is counted once and not
//! made again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::timeline::{ProcessSample, Reading};

pub const C_COUNT: &str = "nvmlDeviceGetCount_v2";
pub const C_HANDLE: &str = "nvmlDeviceGetHandleByIndex_v2";
pub const C_NAME: &str = "nvmlDeviceGetName";
pub const C_UUID: &str = "nvmlDeviceGetUUID";
pub const C_UTIL: &str = "nvmlDeviceGetUtilizationRates";
pub const C_MEMORY: &str = "nvmlDeviceGetMemoryInfo_v2";
pub const C_POWER: &str = "nvmlDeviceGetPowerUsage";
pub const C_TEMP: &str = "nvmlDeviceGetTemperature";
pub const C_CLOCK: &str = "nvmlDeviceGetClockInfo";
pub const C_THROTTLE: &str = "nvmlDeviceGetCurrentClocksThrottleReasons";
pub const C_PROCS: &str = "nvmlDeviceGetComputeRunningProcesses_v3";
pub const C_PROC_UTIL: &str = "nvmlDeviceGetProcessUtilization";
pub const C_SHUTDOWN: &str = "nvmlShutdown";

/// The per-device calls, in order; index = bit in the "not supported" mask.
const CALLS: [&str; 8] = [C_UTIL, C_MEMORY, C_POWER, C_TEMP, C_CLOCK, C_THROTTLE, C_PROCS, C_PROC_UTIL];

/// Error counts by NVML call, and which calls were already logged.
#[derive(Debug, Default)]
pub struct ErrorLog {
    pub counts: BTreeMap<&'static str, u64>,
    logged: BTreeSet<&'static str>,
}

impl ErrorLog {
    pub fn note(&mut self, call: &'static str, gpu: Option<u32>, e: &NvmlError) {
        *self.counts.entry(call).or_insert(0) += 1;
        if self.logged.insert(call) {
            let on = gpu.map(|g| format!(" on GPU {g}")).unwrap_or_default();
            let more = if matches!(e, NvmlError::NotSupported) { "; not asked again on that GPU" } else { "" };
            log::warn!(
                "GPU telemetry: {call} failed{on}: {e} (counted, logged once{more}; other values still sampled)"
            );
        }
    }
}

/// Per-device state kept between ticks.
struct DevState<'n> {
    handle: Option<Device<'n>>,
    /// Bit `i`: `CALLS[i]` answered NotSupported; skipped from then on.
    unsupported: u16,
    /// NVML process-utilization timestamp (µs, CLOCK_REALTIME) of the newest sample seen.
    last_seen_us: u64,
    /// Latest process-utilization mean per pid, kept for HOLD_US.
    recent: HashMap<u32, Recent>,
}

#[derive(Debug, Clone, Copy)]
struct Recent {
    sm: u32,
    mem: u32,
    ts_us: u64,
}

#[derive(Debug, Default)]
struct Acc {
    sm: u32,
    mem: u32,
    n: u32,
    ts_us: u64,
}

/// How long a process's latest utilization sample stands when NVML sends no newer one (NVML
/// reports only processes that ran kernels; the slowest GPUs sample once a second).
const HOLD_US: u64 = 1_000_000;

pub struct Sampler<'n> {
    nvml: &'n Nvml,
    devs: Vec<DevState<'n>>,
    /// Per tick, reused.
    util_acc: HashMap<u32, Acc>,
}

fn realtime_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl<'n> Sampler<'n> {
    pub fn new(nvml: &'n Nvml, count: u32, period_us: u64, errors: &mut ErrorLog) -> Self {
        let since = realtime_us().saturating_sub(period_us);
        let devs = (0..count)
            .map(|i| DevState {
                handle: nvml.device_by_index(i).map_err(|e| errors.note(C_HANDLE, Some(i), &e)).ok(),
                unsupported: 0,
                last_seen_us: since,
                recent: HashMap::new(),
            })
            .collect();
        Sampler { nvml, devs, util_acc: HashMap::new() }
    }

    /// Reads every device once into `readings` (one per device) and `procs`.
    pub fn sample(&mut self, readings: &mut Vec<Reading>, procs: &mut Vec<ProcessSample>, errors: &mut ErrorLog) {
        readings.clear();
        procs.clear();
        for (i, st) in self.devs.iter_mut().enumerate() {
            let gpu = i as u32;
            if st.handle.is_none() {
                st.handle = self.nvml.device_by_index(gpu).map_err(|e| errors.note(C_HANDLE, Some(gpu), &e)).ok();
            }
            let mut r = Reading::default();
            let Some(dev) = st.handle.as_ref() else {
                readings.push(r);
                continue;
            };
            let mut fail = |bit: usize, unsupported: &mut u16, e: NvmlError| {
                if matches!(e, NvmlError::NotSupported) {
                    *unsupported |= 1 << bit;
                }
                errors.note(CALLS[bit], Some(gpu), &e);
            };
            let call = |bit: usize, unsupported: &u16| *unsupported & (1 << bit) == 0;
            let u = &mut st.unsupported;
            if call(0, u) {
                match dev.utilization_rates() {
                    Ok(v) => (r.util_pct, r.mem_util_pct) = (Some(v.gpu), Some(v.memory)),
                    Err(e) => fail(0, u, e),
                }
            }
            if call(1, u) {
                match dev.memory_info() {
                    Ok(m) => (r.fb_used_bytes, r.fb_total_bytes) = (Some(m.used), Some(m.total)),
                    Err(e) => fail(1, u, e),
                }
            }
            if call(2, u) {
                match dev.power_usage() {
                    Ok(v) => r.power_mw = Some(v),
                    Err(e) => fail(2, u, e),
                }
            }
            if call(3, u) {
                match dev.temperature(TemperatureSensor::Gpu) {
                    Ok(v) => r.temp_c = Some(v),
                    Err(e) => fail(3, u, e),
                }
            }
            if call(4, u) {
                match dev.clock_info(Clock::SM) {
                    Ok(v) => r.sm_mhz = Some(v),
                    Err(e) => fail(4, u, e),
                }
            }
            if call(5, u) {
                match dev.current_throttle_reasons() {
                    Ok(v) => r.throttle_reasons = Some(v.bits()),
                    Err(e) => fail(5, u, e),
                }
            }
            // Process utilization: NVML buffers samples at its own rate (1/6 s to 1 s), so a
            // tick may bring none for a busy process; its latest mean stands for HOLD_US.
            let now_us = realtime_us();
            if call(7, u) {
                match dev.process_utilization_stats(st.last_seen_us) {
                    Ok(samples) => {
                        self.util_acc.clear();
                        for s in samples {
                            st.last_seen_us = st.last_seen_us.max(s.timestamp);
                            let a = self.util_acc.entry(s.pid).or_default();
                            (a.sm, a.mem, a.n, a.ts_us) =
                                (a.sm + s.sm_util, a.mem + s.mem_util, a.n + 1, a.ts_us.max(s.timestamp));
                        }
                        for (&pid, a) in &self.util_acc {
                            let mean = |sum: u32| (sum + a.n / 2) / a.n.max(1);
                            st.recent.insert(pid, Recent { sm: mean(a.sm), mem: mean(a.mem), ts_us: a.ts_us });
                        }
                    }
                    // NVML's answer when no process ran kernels since `last_seen`.
                    Err(NvmlError::NotFound) => {}
                    Err(e) => fail(7, u, e),
                }
            }
            st.recent.retain(|_, r| now_us.saturating_sub(r.ts_us) <= HOLD_US);
            let first = procs.len();
            if call(6, u) {
                match dev.running_compute_processes() {
                    Ok(list) => {
                        for p in list {
                            let util = st.recent.get(&p.pid);
                            procs.push(ProcessSample {
                                pid: p.pid,
                                gpu,
                                fb_used_bytes: match p.used_gpu_memory {
                                    UsedGpuMemory::Used(b) => Some(b),
                                    UsedGpuMemory::Unavailable => None,
                                },
                                sm_util_pct: util.map(|r| r.sm),
                                mem_util_pct: util.map(|r| r.mem),
                            });
                        }
                    }
                    Err(e) => fail(6, u, e),
                }
            }
            // Processes with utilization samples but not in the compute list (graphics contexts,
            // or the list call failed).
            let mut rest: Vec<(u32, Recent)> = st
                .recent
                .iter()
                .filter(|(pid, _)| !procs[first..].iter().any(|p| p.pid == **pid))
                .map(|(&p, &r)| (p, r))
                .collect();
            rest.sort_unstable_by_key(|(pid, _)| *pid);
            for (pid, r) in rest {
                procs.push(ProcessSample {
                    pid,
                    gpu,
                    fb_used_bytes: None,
                    sm_util_pct: Some(r.sm),
                    mem_util_pct: Some(r.mem),
                });
            }
            readings.push(r);
        }
    }
}
