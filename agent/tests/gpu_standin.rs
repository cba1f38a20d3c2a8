//! GPU telemetry against the NVML stand-in (tests/gpu/nvml_standin.c, a scripted fake of
//! libnvidia-ml.so.1: this machine has no GPU), loaded through nvml-wrapper's real loading path.
//! No root needed.
//!
//! The stand-in reads its environment at nvmlInit_v2 and the state file on every call, so the
//! scenarios run one at a time (ENV lock) and set the environment before each `start`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use inferscope::gpu::{monotonic_ns, GpuOptions, GpuSelector, GpuTelemetry};
use testbed::gpu::{
    build_standins, write_state, DeviceState, GpuState, ProcessState, StandIns, NVML_FAIL_ENV, NVML_STATE_ENV,
};

const MS: u64 = 1_000_000;

fn env_lock() -> MutexGuard<'static, ()> {
    static ENV: Mutex<()> = Mutex::new(());
    ENV.lock().unwrap_or_else(|e| e.into_inner())
}

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("inferscope-test-gpu-standin-{}", std::process::id()))
}

fn standins() -> &'static StandIns {
    static S: OnceLock<StandIns> = OnceLock::new();
    S.get_or_init(|| {
        let dir = scratch();
        let _ = std::fs::remove_dir_all(&dir);
        build_standins(&dir.join("lib")).unwrap_or_else(|e| panic!("building the GPU stand-ins: {e}"))
    })
}

fn sleep_until(t_ns: u64) {
    let now = monotonic_ns();
    if t_ns > now {
        std::thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

/// Starts telemetry on the stand-in with `state` scripted and `fail` in the FAIL variable.
fn start(state_file: &Path, state: &GpuState, fail: Option<&str>, hz: f64, capacity: usize) -> GpuTelemetry {
    let lib = standins().nvml.clone(); // builds them (and the scratch directory) once
    write_state(state_file, state).expect("write state");
    std::env::set_var(NVML_STATE_ENV, state_file);
    match fail {
        Some(f) => std::env::set_var(NVML_FAIL_ENV, f),
        None => std::env::remove_var(NVML_FAIL_ENV),
    }
    GpuTelemetry::start(GpuOptions { library: Some(lib), hz, timeline_capacity: capacity })
}

fn phase(util0: u32, sm: u32) -> GpuState {
    let me = std::process::id();
    let mut gpu0 = DeviceState::typical(util0);
    gpu0.name = Some("Stand-in GPU zero".into());
    GpuState {
        devices: vec![gpu0, DeviceState::typical(10)],
        processes: vec![
            ProcessState { gpu: 0, pid: me, fb_used: Some(1 << 30), sm_util: Some(sm), mem_util: Some(sm / 2) },
            ProcessState { gpu: 1, pid: 424_242, fb_used: Some(512 << 20), sm_util: Some(5), mem_util: None },
        ],
        fail: vec![],
    }
}

fn close(got: Option<f64>, want: f64, tol: f64, what: &str) {
    let g = got.unwrap_or_else(|| panic!("{what}: no value"));
    assert!((g - want).abs() <= tol, "{what}: {g} not within {tol} of {want}");
}

#[test]
fn scripted_timeline_joins_and_failures() {
    let _env = env_lock();
    let dir = scratch();
    let state = dir.join("state");
    let me = std::process::id();

    // --- 1. A scripted timeline: GPU 0 at 90 % for 800 ms, then 30 % for 1 s; GPU 1 at 10 %.
    let t_start = monotonic_ns();
    let gpu = start(&state, &phase(90, 85), None, 20.0, 1000);
    assert!(gpu.is_running(), "{:?}", gpu.status());
    assert_eq!(gpu.status().devices, 2);
    sleep_until(t_start + 800 * MS);
    write_state(&state, &phase(30, 25)).expect("write state");
    let t_switch = monotonic_ns(); // the rename is the switch
    sleep_until(t_switch + 1000 * MS);
    let t_end = monotonic_ns();
    let period = gpu.sampling_period_ns();
    assert_eq!(period, 50 * MS);

    // Windows inside a phase, 150 ms (3 periods) from its edges: every tick in them read that
    // phase's scripted value, so the mean is exact; ±2 leaves room only for a clock mix-up.
    let p1 = (t_start + 150 * MS, t_switch - 150 * MS);
    let p2 = (t_switch + 150 * MS, t_end - 150 * MS);
    let w = gpu.window(&GpuSelector::Gpus(vec![0]), p1.0, p1.1);
    eprintln!("phase 1, GPU 0: {w:?}");
    close(w.mean_util, 90.0, 2.0, "phase 1 util");
    close(w.mean_mem_util, 45.0, 2.0, "phase 1 memory util");
    assert!(w.reliable && w.samples >= 8, "{w:?}");
    let w = gpu.window(&GpuSelector::Gpus(vec![0]), p2.0, p2.1);
    close(w.mean_util, 30.0, 2.0, "phase 2 util");
    assert!(w.reliable && w.samples >= 10, "{w:?}");
    // All devices: (90 + 10) / 2.
    close(gpu.window(&GpuSelector::All, p1.0, p1.1).mean_util, 50.0, 2.0, "phase 1, all GPUs");
    // Our pid is in GPU 0's process list only, so its windows average GPU 0 alone.
    let w = gpu.window(&GpuSelector::Pids(vec![me]), p2.0, p2.1);
    assert_eq!((w.gpu_mask, w.pid_matched), (0b01, true), "{w:?}");
    close(w.mean_util, 30.0, 2.0, "phase 2 util of our pid's GPU");
    let w = gpu.window(&GpuSelector::Pids(vec![424_242]), p1.0, p1.1);
    assert_eq!(w.gpu_mask, 0b10, "{w:?}");
    close(w.mean_util, 10.0, 2.0, "the other pid's GPU");
    let w = gpu.window(&GpuSelector::Pids(vec![1]), p1.0, p1.1);
    assert_eq!((w.gpu_mask, w.pid_matched), (0b11, false), "unknown pid falls back to all GPUs: {w:?}");

    // A window straddling the switch, 400 ms each side: the time-weighted truth is 60. Each tick
    // stands for one period, so the ticks can misplace at most one period per edge of the
    // switch: 60 × 2 × 50 ms / 800 ms = 7.5.
    let w = gpu.window(&GpuSelector::Gpus(vec![0]), t_switch - 400 * MS, t_switch + 400 * MS);
    eprintln!("straddling: {w:?}");
    close(w.mean_util, 60.0, 7.5, "straddling window");

    // Shorter than two NVML periods: flagged, whatever the number.
    let w = gpu.window(&GpuSelector::Gpus(vec![0]), p1.0, p1.0 + 100 * MS);
    assert!(!w.reliable, "{w:?}");

    // Per process: pid, GPU, SM utilization and memory map to the script.
    let pw = gpu.process_window(me, p1.0, p1.1);
    assert_eq!(pw.gpu_mask, 0b01, "{pw:?}");
    close(pw.mean_sm_util, 85.0, 1.0, "our SM util, phase 1");
    assert_eq!(pw.max_fb_used_bytes, Some(1 << 30));
    close(gpu.process_window(me, p2.0, p2.1).mean_sm_util, 25.0, 1.0, "our SM util, phase 2");

    // Latest values for metrics.
    let snap = gpu.latest().expect("a tick");
    assert!(snap.t_ns > t_switch && snap.t_ns <= monotonic_ns());
    let d0 = &snap.devices[0];
    assert_eq!(d0.name.as_deref(), Some("Stand-in GPU zero"));
    assert!(d0.uuid.as_deref().is_some_and(|u| u.starts_with("GPU-")), "{d0:?}");
    assert_eq!((d0.util_pct, d0.mem_util_pct), (Some(30), Some(15)));
    assert_eq!((d0.fb_used_bytes, d0.fb_total_bytes), (Some(2 << 30), Some(8 << 30)));
    assert_eq!(
        (d0.power_w, d0.temp_c, d0.sm_clock_hz, d0.throttle_reasons),
        (Some(123.0), Some(55), Some(1_410_000_000), Some(0))
    );
    let mine = snap.processes.iter().find(|p| p.pid == me).expect("our pid in the process list");
    assert_eq!((mine.gpu, mine.fb_used_bytes, mine.sm_util_pct), (0, Some(1 << 30), Some(25)));
    assert!(gpu.errors().is_empty(), "{:?}", gpu.errors());

    let j = gpu.timeline_json();
    assert_eq!(j["enabled"], serde_json::json!(true));
    let ts: Vec<u64> = j["t_ns"].as_array().expect("t_ns").iter().filter_map(|v| v.as_u64()).collect();
    assert!(ts.len() >= 20 && ts.windows(2).all(|w| w[0] < w[1]), "{} ticks", ts.len());
    assert_eq!(j["gpus"][0]["util_pct"].as_array().map(Vec::len), Some(ts.len()));
    gpu.stop();

    // --- 2. One call scripted to fail: counted under its name, the other fields still come.
    let gpu = start(&state, &phase(70, 50), Some("nvmlDeviceGetPowerUsage"), 20.0, 1000);
    std::thread::sleep(Duration::from_millis(300));
    let errors = gpu.errors();
    let snap = gpu.latest().expect("a tick");
    assert!(errors.get("nvmlDeviceGetPowerUsage").copied().unwrap_or(0) >= 2, "{errors:?}");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((snap.devices[0].power_w, snap.devices[0].util_pct, snap.devices[0].temp_c), (None, Some(70), Some(55)));
    gpu.stop();

    // --- 3. A query the device does not support: counted once, not asked again.
    let mut st = phase(70, 50);
    st.devices[1].temp_c = None;
    let gpu = start(&state, &st, None, 20.0, 1000);
    std::thread::sleep(Duration::from_millis(300));
    assert!(gpu.ticks() >= 3);
    assert_eq!(gpu.errors().get("nvmlDeviceGetTemperature"), Some(&1), "{:?}", gpu.errors());
    let snap = gpu.latest().expect("a tick");
    assert_eq!((snap.devices[0].temp_c, snap.devices[1].temp_c, snap.devices[1].util_pct), (Some(55), None, Some(10)));
    gpu.stop();

    // --- 4. Bounded timeline: capacity 10 at 20 Hz for 1 s drops the oldest ticks, counted.
    let mut gpu = start(&state, &phase(70, 50), None, 20.0, 10);
    std::thread::sleep(Duration::from_millis(1000));
    gpu.stop_sampling();
    let (len, dropped, ticks) = (gpu.timeline_len(), gpu.dropped_samples(), gpu.ticks());
    assert_eq!(len, 10);
    assert!(dropped >= 5 && dropped == ticks - 10, "dropped {dropped} of {ticks}");
    assert_eq!(gpu.timeline_json()["dropped_samples"], serde_json::json!(dropped));
    assert!(gpu.memory_bytes() < 4096, "{}", gpu.memory_bytes());
    gpu.stop();

    // --- 5. Off, with the reason: no library; a library but no driver; no devices.
    let missing = dir.join("nowhere").join("libnvidia-ml.so.1");
    let gpu = GpuTelemetry::start(GpuOptions { library: Some(missing.clone()), ..Default::default() });
    let GpuTelemetry::Off { reason } = &gpu else { panic!("{gpu:?}") };
    assert!(reason.contains(&missing.display().to_string()) && reason.starts_with("GPU telemetry off"), "{reason}");
    assert!(!gpu.status().enabled);

    std::env::remove_var(NVML_STATE_ENV); // the stand-in's "driver" is its state file
    let gpu = GpuTelemetry::start(GpuOptions { library: Some(standins().nvml.clone()), ..Default::default() });
    let GpuTelemetry::Off { reason } = &gpu else { panic!("{gpu:?}") };
    assert!(reason.contains("driver is not loaded"), "{reason}");

    let gpu = start(&state, &GpuState::default(), None, 10.0, 100);
    let GpuTelemetry::Off { reason } = &gpu else { panic!("{gpu:?}") };
    assert!(reason.contains("0 devices"), "{reason}");
    std::env::remove_var(NVML_STATE_ENV);
}

/// The sampler's own CPU time at 10 Hz (CLOCK_THREAD_CPUTIME_ID of its thread), against the
/// stand-in, whose calls each re-read and parse the state file. Goal: < 0.2 % of one core per GPU.
#[test]
fn sampler_cpu_cost_at_10hz() {
    let _env = env_lock();
    let state = scratch().join("state-cpu");
    for (gpus, secs) in [(1usize, 5u64), (8, 3)] {
        let st = GpuState {
            devices: (0..gpus).map(|i| DeviceState::typical(50 + i as u32)).collect(),
            processes: (0..gpus as u32)
                .map(|g| ProcessState {
                    gpu: g,
                    pid: 1000 + g,
                    fb_used: Some(1 << 30),
                    sm_util: Some(40),
                    mem_util: Some(10),
                })
                .collect(),
            fail: vec![],
        };
        let mut gpu = start(&state, &st, None, 10.0, 36_000);
        // Steady state: from the first second on (the first ticks pay for thread start, first
        // page touches and the process list's first allocations).
        std::thread::sleep(Duration::from_secs(1));
        let (cpu0, wall0, ticks0) = (gpu.sampler_cpu_ns(), gpu.running_ns(), gpu.ticks());
        std::thread::sleep(Duration::from_secs(secs));
        gpu.stop_sampling();
        let (cpu_all, ticks) = (gpu.sampler_cpu_ns(), gpu.ticks());
        let (cpu, wall) = (cpu_all - cpu0, gpu.running_ns() - wall0);
        let share = cpu as f64 / wall as f64;
        eprintln!(
            "GPU sampler at 10 Hz, {gpus} GPU(s): {} ticks in {:.2} s, {:.3} ms CPU = {:.4} % of one core ({:.4} % per GPU, {:.1} µs per tick); first second incl. start: {:.3} ms",
            ticks - ticks0,
            wall as f64 / 1e9,
            cpu as f64 / 1e6,
            share * 100.0,
            share * 100.0 / gpus as f64,
            cpu as f64 / 1e3 / (ticks - ticks0) as f64,
            cpu0 as f64 / 1e6,
        );
        assert!(ticks as f64 >= secs as f64 * 10.0 * 0.8, "{ticks} ticks in {secs} s");
        // Loose bound for a loaded 2-core CI machine; the measured figure goes to BENCHMARKS.md.
        assert!(share / (gpus as f64) < 0.01, "sampler uses {:.3} % of a core per GPU", share * 100.0 / gpus as f64);
        gpu.stop();
    }
}

/// The CUDA runtime stand-in: every symbol the `cuda` profile probes exists, and the functions do
/// their work (copies copy, synchronisation waits its scripted time, launches are counted).
#[test]
fn cudart_standin_exports_the_cuda_profile_and_works() {
    use std::ffi::{c_int, c_void, CString};
    let _env = env_lock();
    let lib = &standins().cudart;
    let path = CString::new(lib.to_str().expect("utf-8 path")).expect("path");
    // SAFETY: a valid C string; the stand-in has no constructors.
    let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!h.is_null(), "dlopen {}", lib.display());
    let sym = |name: &str| -> *mut c_void {
        let c = CString::new(name).expect("name");
        // SAFETY: `h` is a live handle from dlopen, `c` a valid C string.
        unsafe { libc::dlsym(h, c.as_ptr()) }
    };

    let profile = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("stage-sets/cuda.stages"))
        .expect("cuda profile");
    let probed: Vec<&str> = profile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|spec| spec.rsplit(':').next().unwrap_or(spec))
        .collect();
    assert!(probed.len() >= 7, "{probed:?}");
    for s in &probed {
        assert!(!sym(s).is_null(), "the cuda profile probes {s}; the stand-in must export it");
    }

    #[repr(C)]
    struct Dim3 {
        x: u32,
        y: u32,
        z: u32,
    }
    type Malloc = unsafe extern "C" fn(*mut *mut c_void, usize) -> c_int;
    type Free = unsafe extern "C" fn(*mut c_void) -> c_int;
    type Memcpy = unsafe extern "C" fn(*mut c_void, *const c_void, usize, c_int) -> c_int;
    type Launch = unsafe extern "C" fn(*const c_void, Dim3, Dim3, *mut *mut c_void, usize, *mut c_void) -> c_int;
    type Sync = unsafe extern "C" fn() -> c_int;
    type Count = unsafe extern "C" fn() -> u64;
    // SAFETY: the symbols exist (checked above or by the asserts below) and have these C
    // signatures (tests/gpu/cudart_standin.c).
    unsafe {
        for s in [
            "cudaMalloc",
            "cudaFree",
            "cudaMemcpy",
            "cudaLaunchKernel",
            "cudaDeviceSynchronize",
            "inferscope_cudart_standin_launches",
        ] {
            assert!(!sym(s).is_null(), "{s}");
        }
        let malloc: Malloc = std::mem::transmute(sym("cudaMalloc"));
        let free: Free = std::mem::transmute(sym("cudaFree"));
        let memcpy: Memcpy = std::mem::transmute(sym("cudaMemcpy"));
        let launch: Launch = std::mem::transmute(sym("cudaLaunchKernel"));
        let sync: Sync = std::mem::transmute(sym("cudaDeviceSynchronize"));
        let launches: Count = std::mem::transmute(sym("inferscope_cudart_standin_launches"));

        let src: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut dev: *mut c_void = std::ptr::null_mut();
        assert_eq!(malloc(&mut dev, src.len()), 0);
        assert_eq!(memcpy(dev, src.as_ptr().cast(), src.len(), 1), 0);
        let mut back = vec![0u8; src.len()];
        assert_eq!(memcpy(back.as_mut_ptr().cast(), dev, src.len(), 2), 0);
        assert_eq!(back, src, "cudaMemcpy round trip");

        let before = launches();
        let kernel = launch as *const c_void; // any non-null function pointer
        for _ in 0..5 {
            assert_eq!(
                launch(
                    kernel,
                    Dim3 { x: 1, y: 1, z: 1 },
                    Dim3 { x: 32, y: 1, z: 1 },
                    std::ptr::null_mut(),
                    0,
                    std::ptr::null_mut()
                ),
                0
            );
        }
        assert_eq!(launches() - before, 5);

        // Synchronisation waits the scripted 300 µs, plus 200 µs per launched kernel when asked.
        let t = std::time::Instant::now();
        assert_eq!(sync(), 0);
        let plain = t.elapsed();
        std::env::set_var("INFERSCOPE_CUDART_STANDIN_KERNEL_US", "200");
        for _ in 0..5 {
            launch(
                kernel,
                Dim3 { x: 1, y: 1, z: 1 },
                Dim3 { x: 1, y: 1, z: 1 },
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
            );
        }
        let t = std::time::Instant::now();
        assert_eq!(sync(), 0);
        let with_kernels = t.elapsed();
        std::env::remove_var("INFERSCOPE_CUDART_STANDIN_KERNEL_US");
        assert!(plain >= Duration::from_micros(300), "{plain:?}");
        assert!(with_kernels >= Duration::from_micros(1300), "{with_kernels:?}");
        assert_eq!(free(dev), 0);
    }
}
