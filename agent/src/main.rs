//! Command line only: parse arguments, call into the library, print, exit with a clear code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use inferscope::attach::{attach, AttachOptions};

#[derive(Parser)]
#[command(
    name = "inferscope",
    version,
    about = "eBPF profiler for inference servers: TTFT, inter-token latency and more, out of process"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as a node agent: discover inference processes by rules, follow them as they come and
    /// go, and serve Prometheus metrics and flamegraphs over HTTP.
    Agent {
        /// TOML config (listen address, limits, [[rule]]s); see deploy/config/config.toml.
        #[arg(long, default_value = "/etc/inferscope/config.toml")]
        config: PathBuf,
        /// Override the config's listen address.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Attach to one running process and measure the streams it serves.
    Attach {
        /// Process to attach to.
        #[arg(long)]
        pid: u32,
        /// Stop after this many seconds (default: until Ctrl-C or the target exits).
        #[arg(long)]
        duration: Option<f64>,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Ring-buffer size in bytes (rounded up to a power-of-two number of pages).
        #[arg(long, default_value_t = agent_common::DEFAULT_RING_BYTES)]
        ring_buffer_bytes: u32,
        /// Finished requests kept for the report (later ones are counted only).
        #[arg(long, default_value_t = 100_000)]
        max_requests: usize,
        /// Distinct models named in the report (from each request's JSON `model`); later
        /// ones are reported as `other`.
        #[arg(long, default_value_t = inferscope::http::model::DEFAULT_MAX_MODELS)]
        max_models: usize,
        /// Rows in the terminal waterfall.
        #[arg(long, default_value_t = 30)]
        waterfall_rows: usize,
        /// No live status line.
        #[arg(long)]
        quiet: bool,
        /// Time a function as a stage: NAME=SPEC, SPEC being SYMBOL, LIBRARY:SYMBOL or a glob on
        /// demangled names (`*::tokenize`); or `py:GLOB` on Python `module.qualname`s
        /// (`py:*Scheduler.schedule`), estimated by CPU sampling (reported as sampled, with error
        /// bars). Repeatable.
        #[arg(long = "stage", value_name = "NAME=SPEC")]
        stages: Vec<String>,
        /// A named stage set (built in: llama.cpp, cuda; Python, sampled: llama-cpp-python, vllm,
        /// sglang) or a path to a .stages file. Repeatable.
        #[arg(long = "stage-set", value_name = "NAME|FILE")]
        stage_sets: Vec<String>,
        /// Deprecated: the old name of --stage-set.
        #[arg(long = "profile", value_name = "NAME|FILE")]
        profiles: Vec<String>,
        /// Sample the CPU and write a flamegraph SVG here (plus FILE.prefill.svg, FILE.decode.svg, FILE.idle.svg).
        #[arg(long, value_name = "FILE.svg")]
        flamegraph: Option<PathBuf>,
        /// Write folded stacks here (and per phase: FILE.prefill…).
        #[arg(long, value_name = "FILE")]
        folded: Option<PathBuf>,
        /// Sample the CPU and write a pprof profile here (gzipped profile.proto, for `go tool
        /// pprof`, Pyroscope, Parca), the request phase as a sample label; off-CPU beside it as
        /// FILE.offcpu… with --off-cpu.
        #[arg(long, value_name = "FILE.pb.gz")]
        pprof: Option<PathBuf>,
        /// Write the run as a timeline in the Chrome Trace Event format (Perfetto,
        /// chrome://tracing): requests with their phases, stage calls per thread, GPU counters.
        #[arg(long, value_name = "FILE.json")]
        trace: Option<PathBuf>,
        /// CPU sampling frequency in Hz (software cpu-clock).
        #[arg(long, default_value_t = 99)]
        frequency: u64,
        /// Also record off-CPU time (where threads block, and for how long, from scheduler
        /// switches), written beside the CPU files as FILE.offcpu.svg / FILE.offcpu (microseconds).
        #[arg(long)]
        off_cpu: bool,
        /// NVML samples per second for GPU telemetry joined to requests and stages; 0 = off.
        /// Without an NVIDIA driver or GPU the report says GPU telemetry is off, and why.
        #[arg(long, default_value_t = 10.0)]
        gpu_hz: f64,
        /// NVML library to load (default: libnvidia-ml.so.1 from the dynamic loader's path).
        #[arg(long, value_name = "PATH")]
        nvml_library: Option<PathBuf>,
        /// Stream capture path: `auto` = socket-layer tracepoints (Linux 6.3+ with BTF), else
        /// syscall tracepoints (which slow every process's syscalls while attached).
        #[arg(long, value_enum, default_value_t = inferscope::capture::CaptureChoice::Auto)]
        capture: inferscope::capture::CaptureChoice,
        /// Show request paths as sent, in the terminal and the JSON. Off by default: paths may
        /// carry IDs, API keys or e-mail addresses, so every output shows route templates
        /// (`/v1/threads/{id}/runs`) unless this is given.
        #[arg(long)]
        raw_paths: bool,
        /// Export GenAI metrics (OpenTelemetry semantic conventions: time to first token, time
        /// per output token, request duration, token usage) over OTLP/HTTP protobuf to this
        /// endpoint while the run lasts, e.g. http://127.0.0.1:4318 (`/v1/metrics` is appended).
        #[arg(long, value_name = "ENDPOINT")]
        otlp: Option<String>,
        /// Seconds between OTLP exports (the last one is sent when the run ends).
        #[arg(long, value_name = "SECS", default_value_t = inferscope::export::otlp::DEFAULT_INTERVAL_S)]
        otlp_interval: f64,
        /// Follow only --pid, not the workers of a pre-fork server (processes below it that
        /// serve its listening sockets; followed by default, as they come and go).
        #[arg(long)]
        no_workers: bool,
        /// Walk user stacks by frame pointers only, without `.eh_frame` unwind tables: cheaper
        /// samples and no table memory, but stacks through code built without frame pointers
        /// (most distro libraries, pip wheels, Rust release builds) stop after 2-3 frames.
        #[arg(long)]
        frame_pointers_only: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).format_timestamp(None).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inferscope: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent { config, listen } => {
            let mut cfg = inferscope::daemon::Config::load(&config)?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(inferscope::daemon::run(cfg, config))
        }
        Command::Attach {
            pid,
            duration,
            json,
            ring_buffer_bytes,
            max_requests,
            max_models,
            waterfall_rows,
            quiet,
            stages,
            stage_sets,
            profiles,
            flamegraph,
            folded,
            pprof,
            trace,
            frequency,
            off_cpu,
            gpu_hz,
            nvml_library,
            capture,
            raw_paths,
            no_workers,
            frame_pointers_only,
            otlp,
            otlp_interval,
        } => {
            anyhow::ensure!(
                !off_cpu || flamegraph.is_some() || folded.is_some() || pprof.is_some(),
                "--off-cpu writes its flamegraph beside the CPU one: give --flamegraph FILE.svg, --folded FILE or --pprof FILE"
            );
            anyhow::ensure!((1..=10_000).contains(&frequency), "--frequency must be 1..=10000 Hz");
            anyhow::ensure!(
                (4096..=1 << 30).contains(&ring_buffer_bytes),
                "--ring-buffer-bytes must be between one page (4096) and 1 GiB, got {ring_buffer_bytes}"
            );
            // Every output is checked before attaching: a bad path found after the capture would
            // lose the whole run.
            for (flag, path) in
                [("--json", &json), ("--flamegraph", &flamegraph), ("--folded", &folded), ("--pprof", &pprof)]
            {
                if let Some(p) = path.as_deref().filter(|p| !(flag == "--json" && *p == std::path::Path::new("-"))) {
                    check_writable(flag, p)?;
                }
            }
            let otlp = otlp
                .map(|e| {
                    inferscope::export::otlp::OtlpOptions::new(
                        &e,
                        otlp_interval,
                        inferscope::export::otlp::DEFAULT_TIMEOUT_S,
                    )
                })
                .transpose()?;
            inferscope::procfs::check_attachable(pid)?;
            if let Some(d) = duration {
                anyhow::ensure!(d.is_finite() && d > 0.0, "--duration must be a positive number of seconds");
            }
            let stage_defs = inferscope::stages::collect(&stage_sets, &profiles, &stages)?;
            let python_stages = stage_defs.iter().any(inferscope::stages::StageDef::is_python);
            let opts = AttachOptions {
                pid,
                duration: duration.map(Duration::from_secs_f64),
                ring_bytes: ring_buffer_bytes,
                max_requests,
                max_models,
                status: !quiet,
                stages: stage_defs,
                // Python stages (`py:GLOB`) are sampled: they need the sampler too.
                sample_hz: (flamegraph.is_some() || folded.is_some() || pprof.is_some() || python_stages)
                    .then_some(frequency),
                offcpu: off_cpu,
                gpu: (gpu_hz > 0.0).then(|| inferscope::gpu::GpuOptions {
                    library: nvml_library,
                    hz: gpu_hz,
                    ..inferscope::gpu::GpuOptions::default()
                }),
                capture,
                raw_paths,
                follow_workers: !no_workers,
                frame_pointers_only,
                otlp,
                ..AttachOptions::default()
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let report = rt.block_on(attach(opts))?;
            if json_on_stdout(json.as_deref()) {
                // stdout is the JSON document alone (`--json - | jq`): the table goes to stderr.
                let width = inferscope::report::width::width_of(libc::STDERR_FILENO);
                eprint!("{}", report.render(width, waterfall_rows));
            } else {
                print!("{}", report.render(terminal_width(), waterfall_rows));
            }
            if let Some(cpu) = &report.cpu {
                let title = format!("{} (pid {}) — {:.1} s", report.target.comm, report.target.pid, report.duration_s);
                for p in inferscope::profile::write(cpu, flamegraph.as_deref(), folded.as_deref(), &title)? {
                    eprintln!("inferscope: wrote {}", p.display());
                }
                if let Some(p) = &pprof {
                    inferscope::profile::pprof::write(p, cpu, sampling(&report, Some(frequency)))?;
                    eprintln!("inferscope: wrote {}", p.display());
                }
            }
            if let Some(off) = &report.offcpu {
                let title =
                    format!("{} (pid {}) off-CPU — {:.1} s", report.target.comm, report.target.pid, report.duration_s);
                let svg = flamegraph.as_deref().map(|p| inferscope::profile::phase_path(p, "offcpu"));
                let fold = folded.as_deref().map(|p| inferscope::profile::phase_path(p, "offcpu"));
                for p in inferscope::profile::write(off, svg.as_deref(), fold.as_deref(), &title)? {
                    eprintln!("inferscope: wrote {}", p.display());
                }
                if let Some(p) = pprof.as_deref().map(|p| inferscope::profile::phase_path(p, "offcpu")) {
                    inferscope::profile::pprof::write(&p, off, sampling(&report, None))?;
                    eprintln!("inferscope: wrote {}", p.display());
                }
            }
            if let Some(path) = &trace {
                let text = serde_json::to_string(&report.trace_json())?;
                std::fs::write(path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                eprintln!("inferscope: wrote {}", path.display());
            }
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report.to_json())?;
                if json_on_stdout(Some(&path)) {
                    println!("{text}");
                } else {
                    std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                    eprintln!("inferscope: wrote {}", path.display());
                }
            }
            Ok(())
        }
    }
}

/// An output file can be created: its directory exists and is writable, and it is not a directory.
fn check_writable(flag: &str, path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    anyhow::ensure!(!path.is_dir(), "{flag} {}: is a directory, give a file name", path.display());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    anyhow::ensure!(dir.is_dir(), "{flag} {}: directory {} does not exist", path.display(), dir.display());
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path.
    let writable = unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0;
    anyhow::ensure!(writable, "{flag} {}: directory {} is not writable", path.display(), dir.display());
    Ok(())
}

/// The run's sampling for a pprof file: `hz` for CPU samples, `None` for off-CPU time.
fn sampling(report: &inferscope::report::Report, hz: Option<u64>) -> inferscope::profile::pprof::Sampling {
    let duration_ns = (report.duration_s * 1e9) as i64;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    inferscope::profile::pprof::Sampling { hz, start_unix_ns: now - duration_ns, duration_ns }
}

/// `--json -`: the JSON document is written to stdout.
fn json_on_stdout(json: Option<&std::path::Path>) -> bool {
    json == Some(std::path::Path::new("-"))
}

/// The report's width: stdout's terminal, else `COLUMNS`, else 120.
fn terminal_width() -> usize {
    inferscope::report::width::width_of(libc::STDOUT_FILENO)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stage_sets_by_their_flag_and_its_deprecated_name() {
        let cli = Cli::try_parse_from(["inferscope", "attach", "--pid", "1", "--stage-set", "cuda", "--profile", "x"]);
        let Command::Attach { stage_sets, profiles, .. } = cli.unwrap().command else { panic!("attach") };
        assert_eq!((stage_sets, profiles), (vec!["cuda".to_string()], vec!["x".to_string()]));
    }

    #[test]
    fn json_dash_means_stdout() {
        let cli = Cli::try_parse_from(["inferscope", "attach", "--pid", "1", "--json", "-"]).unwrap();
        let Command::Attach { json, .. } = cli.command else { panic!("attach") };
        assert!(json_on_stdout(json.as_deref()));
        assert!(!json_on_stdout(Some(std::path::Path::new("./-x.json"))));
        assert!(!json_on_stdout(None));
    }
}
