//! GPU telemetry joined to requests and stages in `inferscope attach`, and the `cuda` profile end
//! to end, against STAND-INS (this machine has no GPU): tests/gpu/nvml_standin.c as
//! libnvidia-ml.so.1, loaded by the agent through nvml-wrapper's real loader, and
//! tests/gpu/cudart_standin.c as libcudart.so.12, dlopen'ed by a real Python server
//! (tests/servers/cuda_server.py) after the agent attached.
//!
//! The server scripts the stand-in GPU (90 % busy while it prefills, 30 % while it decodes, 5 %
//! idle) and records its own truth: request and token times, every CUDA call it made per request
//! and the time it spent inside the synchronising ones. Needs root (real eBPF, real uprobes).

mod common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const PREFILL_UTIL: f64 = 90.0;
const DECODE_UTIL: f64 = 30.0;
/// Stand-in kernel time: a synchronising call waits this per kernel launched since the last one.
const KERNEL_US: u64 = 5_000;
const PREFILL_LAUNCHES: u64 = 4;
const DECODE_LAUNCHES: u64 = 3;
const QUERY: &str = "prefill_ms=600&tokens=12&interval_ms=60&prefill_launches=4&decode_launches=3";
const REQUESTS: usize = 6;
const CUDA_STAGES: [&str; 6] =
    ["launch_kernel", "memcpy", "device_synchronize", "stream_synchronize", "malloc", "free"];

struct CudaServer {
    child: Child,
    port: u16,
    truth: PathBuf,
}

impl CudaServer {
    fn start(dir: &Path, cudart: &Path, state: &Path) -> CudaServer {
        let truth = dir.join("truth.jsonl");
        let mut child = Command::new("python3")
            .arg(workspace_root().join("tests/servers/cuda_server.py"))
            .args(["--port", "0", "--truth"])
            .arg(&truth)
            .arg("--cudart")
            .arg(cudart)
            .arg("--gpu-state")
            .arg(state)
            .env("INFERSCOPE_CUDART_STANDIN_SYNC_US", "0")
            .env("INFERSCOPE_CUDART_STANDIN_KERNEL_US", KERNEL_US.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let lines = lines_of(child.stdout.take().unwrap());
        let line = lines.recv_timeout(Duration::from_secs(20)).expect("cuda_server did not start");
        let port = line.strip_prefix("LISTENING ").and_then(|p| p.trim().parse().ok()).expect("LISTENING line");
        CudaServer { child, port, truth }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn has_cudart_mapped(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/maps", self.child.id())).unwrap_or_default().contains("libcudart")
    }

    /// POST /load: the server dlopens the CUDA runtime now.
    fn load_cuda(&self) {
        let mut s = std::net::TcpStream::connect(self.addr()).unwrap();
        s.write_all(b"POST /load HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.contains("\"loaded\":true"), "{out}");
    }

    fn truth(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.truth)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for CudaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn f64_at(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(*k)).and_then(Value::as_f64)
}

#[test]
fn per_request_and_per_stage_gpu_and_cuda_calls_match_the_script() {
    let _serial = require_root();
    let dir = scratch_dir("gpu-attach");
    let standins = testbed::gpu::build_standins(&dir.join("lib")).expect("building the stand-ins");
    let state = dir.join("nvml.state");
    let server = CudaServer::start(&dir, &standins.cudart, &state);
    let pid = server.child.id();
    assert!(!server.has_cudart_mapped(), "the CUDA runtime must not be loaded before the agent attaches");

    let json = dir.join("report.json");
    let nvml = standins.nvml.to_str().unwrap();
    let mut agent = Agent::attach_with_env(
        pid,
        &json,
        &["--profile", "cuda", "--gpu-hz", "20", "--nvml-library", nvml],
        &[(testbed::gpu::NVML_STATE_ENV, &state)],
    );
    agent.wait_for("GPU telemetry on", Duration::from_secs(10));
    // The server loads libcudart only now; the agent's maps rescan finds it and attaches.
    server.load_cuda();
    assert!(server.has_cudart_mapped());
    agent.wait_for("probing cudaLaunchKernel", Duration::from_secs(20));
    agent.wait_for("probing cudaFree", Duration::from_secs(20));

    let load = testbed::run_load(&server.addr(), REQUESTS, 1, false, QUERY, "g").unwrap();
    assert_eq!(load.errors, 0, "{:?}", load.results);
    std::thread::sleep(Duration::from_millis(300));
    let (report, text) = agent.stop_with_stdout();
    let truth = server.truth();
    assert_eq!(truth.len(), REQUESTS);
    let got = requests_by_path(&report);

    // ---- the cuda profile: every call counted per request, synchronisation timed ----
    for t in &truth {
        let path = t["path"].as_str().unwrap();
        let r = &got[path];
        for stage in CUDA_STAGES {
            let want = t["calls"][stage].as_u64().unwrap();
            let have = r["stages"][stage]["count"].as_u64().unwrap_or(0);
            assert_eq!(have, want, "{path}: {stage} calls, agent {have} truth {want}; agent {}", r["stages"]);
        }
        // The uprobes time the C function; Python's own timing adds ctypes around each call.
        for stage in ["device_synchronize", "stream_synchronize"] {
            let n = t["calls"][stage].as_f64().unwrap();
            let have = f64_at(r, &["stages", stage, "total_s"]).unwrap();
            let truth_s = t["sync_ns"][stage].as_f64().unwrap() / 1e9;
            assert!(
                have <= truth_s && have >= truth_s - n * 300e-6 - 1e-3,
                "{path}: {stage} total agent {have} s, Python around the calls {truth_s} s over {n} calls"
            );
        }
    }
    let stage_mean = |name: &str| {
        report["stages"].as_array().unwrap().iter().find(|s| s["name"] == name).and_then(|s| s["mean_s"].as_f64())
    };
    let dev_sync = stage_mean("device_synchronize").unwrap();
    let want = (PREFILL_LAUNCHES * KERNEL_US) as f64 / 1e6;
    assert!((dev_sync - want).abs() < want * 0.2, "device_synchronize mean {dev_sync} s, stand-in waits {want} s");
    let stream_sync = stage_mean("stream_synchronize").unwrap();
    let want = (DECODE_LAUNCHES * KERNEL_US) as f64 / 1e6;
    assert!(
        (stream_sync - want).abs() < want * 0.2,
        "stream_synchronize mean {stream_sync} s, stand-in waits {want} s"
    );

    // ---- GPU utilization per request, per phase and per stage ----
    let gpu = &report["gpu"];
    assert_eq!(gpu["status"]["enabled"], true, "{gpu}");
    assert_eq!(gpu["process_found"], true, "the server's PID is in the stand-in's process list");
    let mut prefill_utils = Vec::new();
    let mut decode_utils = Vec::new();
    for t in &truth {
        let path = t["path"].as_str().unwrap();
        let g = &got[path]["gpu"];
        // 600 ms and 660 ms windows at 20 Hz: long enough for a figure each (≥ 2 × 1/6 s).
        assert_eq!(g["prefill"]["too_short"], false, "{path}: {g}");
        assert_eq!(g["decode"]["too_short"], false, "{path}: {g}");
        let p = g["prefill"]["util_pct"].as_f64().unwrap();
        let d = g["decode"]["util_pct"].as_f64().unwrap();
        // A tick in the sub-millisecond gap between a phase's first syscall and the server's
        // script write reads the previous phase: at most one of ~12 samples.
        assert!((p - PREFILL_UTIL).abs() <= 90.0 / 10.0, "{path}: prefill util {p}; {g}");
        assert!((d - DECODE_UTIL).abs() <= 90.0 / 10.0, "{path}: decode util {d}; {g}");
        prefill_utils.push(p);
        decode_utils.push(d);
    }
    assert_eq!(median(prefill_utils), PREFILL_UTIL);
    assert_eq!(median(decode_utils), DECODE_UTIL);
    let phase = |p: &str| f64_at(gpu, &["phases", p, "util_pct"]).unwrap_or_else(|| panic!("phase {p}: {gpu}"));
    assert!((phase("prefill") - PREFILL_UTIL).abs() < 2.0, "{}", gpu["phases"]);
    assert!((phase("decode") - DECODE_UTIL).abs() < 2.0, "{}", gpu["phases"]);
    // Stages: the prefill synchronisations ran while the script said 90 %, the decode ones 30 %.
    let stage = |s: &str| &gpu["stages"][s];
    let ds = f64_at(stage("device_synchronize"), &["util_pct"]).unwrap();
    let ss = f64_at(stage("stream_synchronize"), &["util_pct"]).unwrap();
    assert!((ds - PREFILL_UTIL).abs() < 3.0, "device_synchronize util {ds}: {}", gpu["stages"]);
    assert!((ss - DECODE_UTIL).abs() < 3.0, "stream_synchronize util {ss}: {}", gpu["stages"]);
    // Launches take microseconds: far too short for NVML, and said so rather than a number.
    assert_eq!(stage("launch_kernel")["too_short"], true, "{}", gpu["stages"]);
    assert!(stage("launch_kernel")["util_pct"].is_null());
    // The process's own use, and the timeline.
    assert_eq!(gpu["process"]["max_fb_used_bytes"].as_u64(), Some(2 << 30));
    let ticks = gpu["timeline"]["t_ns"].as_array().map_or(0, Vec::len);
    let run_s = report["summary"]["duration_s"].as_f64().unwrap();
    assert!(ticks as f64 >= run_s * 20.0 * 0.7, "{ticks} ticks in {run_s} s at 20 Hz");
    // The terminal report shows the same.
    eprintln!(
        "{}",
        text.lines().skip_while(|l| !l.starts_with("GPU utilization")).take(12).collect::<Vec<_>>().join("\n")
    );
    assert!(text.contains("waiting for first token (prefill)") && text.contains("SM  90.0%"), "{text}");
    assert!(text.contains("too short for NVML's sampling period"), "{text}");
    assert!(text.contains("gpu 90/30%"), "{text}");
}

#[test]
fn without_nvml_gpu_is_off_with_the_reason_and_the_rest_works() {
    let _serial = require_root();
    let dir = scratch_dir("gpu-attach-off");
    let standins = testbed::gpu::build_standins(&dir.join("lib")).expect("building the stand-ins");
    let state = dir.join("nvml.state");
    let server = CudaServer::start(&dir, &standins.cudart, &state);
    let missing = dir.join("no-such-dir/libnvidia-ml.so.1");
    let mut agent = Agent::attach_with_env(
        server.child.id(),
        &dir.join("report.json"),
        &["--profile", "cuda", "--nvml-library", missing.to_str().unwrap()],
        &[],
    );
    agent.wait_for("GPU telemetry off", Duration::from_secs(10));
    server.load_cuda();
    agent.wait_for("probing cudaFree", Duration::from_secs(20));
    let load = testbed::run_load(&server.addr(), 2, 1, false, "prefill_ms=100&tokens=3&interval_ms=10", "off").unwrap();
    assert_eq!(load.errors, 0);
    std::thread::sleep(Duration::from_millis(200));
    let (report, text) = agent.stop_with_stdout();
    let gpu = &report["gpu"];
    assert_eq!(gpu["status"]["enabled"], false);
    let reason = gpu["status"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("GPU telemetry off") && reason.contains("no-such-dir"), "{reason}");
    assert!(text.contains(reason), "{text}");
    let got = requests_by_path(&report);
    assert_eq!(got.keys().filter(|p| p.starts_with("/v1/")).count(), 2, "{:?}", got.keys());
    assert!(got.contains_key("/load"), "POST /load is a request too");
    for t in server.truth() {
        let r = &got[t["path"].as_str().unwrap()];
        assert!(r.get("gpu").is_none(), "{r}");
        assert_eq!(r["tokens"].as_u64(), None);
        assert_eq!(r["chunks"], 3);
        assert_eq!(r["stages"]["launch_kernel"]["count"].as_u64(), t["calls"]["launch_kernel"].as_u64());
    }
}
