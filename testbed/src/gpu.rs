//! GPU stand-ins for machines without an NVIDIA GPU: builds the C stand-in libraries in
//! `tests/gpu/` (a scripted `libnvidia-ml.so.1` and a `libcudart.so.12` with the real CUDA
//! runtime symbol names) and writes the state file that scripts the NVML stand-in's answers.
//!
//! These are fakes at a boundary this machine cannot reach; `tests/gpu/README.md` documents
//! what they do and do not imitate.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Environment variable naming the NVML stand-in's state file (read at `nvmlInit_v2`).
pub const NVML_STATE_ENV: &str = "INFERSCOPE_NVML_STANDIN_STATE";
/// Environment variable listing NVML calls the stand-in fails (read at `nvmlInit_v2`).
pub const NVML_FAIL_ENV: &str = "INFERSCOPE_NVML_STANDIN_FAIL";

/// Paths of the built stand-ins.
#[derive(Debug, Clone)]
pub struct StandIns {
    /// `<out>/libnvidia-ml.so.1` (soname `libnvidia-ml.so.1`), the file to hand to NVML loaders.
    pub nvml: PathBuf,
    /// `<out>/libnvidia-ml.so` → `libnvidia-ml.so.1`.
    pub nvml_link: PathBuf,
    /// `<out>/libcudart.so.12` (soname `libcudart.so.12`).
    pub cudart: PathBuf,
    /// `<out>/libcudart.so` → `libcudart.so.12`.
    pub cudart_link: PathBuf,
    /// The output directory (put it on `LD_LIBRARY_PATH` to let `dlopen("libcudart.so.12")` find it).
    pub dir: PathBuf,
}

/// `tests/gpu/` in this workspace: the C sources of the stand-ins.
pub fn standin_sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("tests").join("gpu")
}

/// Compiles both stand-ins into `out_dir` with `cc -shared -fPIC -O1 -g`, sets their sonames
/// and creates the unversioned symlinks.
pub fn build_standins(out_dir: &Path) -> Result<StandIns, String> {
    std::fs::create_dir_all(out_dir).map_err(|e| format!("create {}: {e}", out_dir.display()))?;
    let src = standin_sources();
    let nvml = compile(&src.join("nvml_standin.c"), out_dir, "libnvidia-ml.so.1")?;
    let cudart = compile(&src.join("cudart_standin.c"), out_dir, "libcudart.so.12")?;
    let nvml_link = symlink(out_dir, "libnvidia-ml.so", "libnvidia-ml.so.1")?;
    let cudart_link = symlink(out_dir, "libcudart.so", "libcudart.so.12")?;
    Ok(StandIns { nvml, nvml_link, cudart, cudart_link, dir: out_dir.to_path_buf() })
}

fn compile(src: &Path, out_dir: &Path, soname: &str) -> Result<PathBuf, String> {
    let out = out_dir.join(soname);
    // Build under a temporary name and rename: a process that already mapped the old file keeps
    // its copy intact.
    let tmp = out_dir.join(format!(".{soname}.{}.tmp", std::process::id()));
    let res = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-g", "-Wall"])
        .arg(format!("-Wl,-soname,{soname}"))
        .arg("-o")
        .arg(&tmp)
        .arg(src)
        .output()
        .map_err(|e| format!("cc for {}: {e} (install gcc)", src.display()))?;
    if !res.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cc {} failed: {}", src.display(), String::from_utf8_lossy(&res.stderr)));
    }
    std::fs::rename(&tmp, &out).map_err(|e| format!("rename to {}: {e}", out.display()))?;
    Ok(out)
}

fn symlink(dir: &Path, link: &str, target: &str) -> Result<PathBuf, String> {
    let path = dir.join(link);
    let _ = std::fs::remove_file(&path);
    std::os::unix::fs::symlink(target, &path).map_err(|e| format!("symlink {}: {e}", path.display()))?;
    Ok(path)
}

/// One scripted GPU. `None` leaves the key out: the stand-in answers that query with
/// `NVML_ERROR_NOT_SUPPORTED`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceState {
    pub util: Option<u32>,
    pub mem_util: Option<u32>,
    pub fb_used: Option<u64>,
    pub fb_total: Option<u64>,
    pub power_mw: Option<u32>,
    pub temp_c: Option<u32>,
    pub sm_mhz: Option<u32>,
    pub mem_mhz: Option<u32>,
    pub throttle: Option<u64>,
    pub name: Option<String>,
    pub uuid: Option<String>,
}

impl DeviceState {
    /// A device answering every query: `util` % busy, 2 of 8 GiB used, 123 W, 55 °C, 1410 MHz.
    pub fn typical(util: u32) -> Self {
        DeviceState {
            util: Some(util),
            mem_util: Some(util / 2),
            fb_used: Some(2 << 30),
            fb_total: Some(8 << 30),
            power_mw: Some(123_000),
            temp_c: Some(55),
            sm_mhz: Some(1410),
            mem_mhz: Some(1215),
            throttle: Some(0),
            name: None,
            uuid: None,
        }
    }
}

/// One process in a GPU's compute process list (and, with `sm_util`/`mem_util`, in its
/// process utilization samples).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessState {
    pub gpu: u32,
    pub pid: u32,
    pub fb_used: Option<u64>,
    pub sm_util: Option<u32>,
    pub mem_util: Option<u32>,
}

/// Everything the NVML stand-in answers; device `i` of `devices` is GPU index `i`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuState {
    pub devices: Vec<DeviceState>,
    pub processes: Vec<ProcessState>,
    /// NVML function names the stand-in fails with `NVML_ERROR_UNKNOWN` (besides the FAIL env).
    pub fail: Vec<String>,
}

impl GpuState {
    /// The state file's text.
    pub fn render(&self) -> String {
        let mut s = String::from("# inferscope NVML stand-in state (tests/gpu/README.md)\n");
        for (i, d) in self.devices.iter().enumerate() {
            let _ = write!(s, "gpu={i}");
            let nums: [(&str, Option<u64>); 9] = [
                ("util", d.util.map(u64::from)),
                ("memutil", d.mem_util.map(u64::from)),
                ("fb_used", d.fb_used),
                ("fb_total", d.fb_total),
                ("power_mw", d.power_mw.map(u64::from)),
                ("temp", d.temp_c.map(u64::from)),
                ("sm_mhz", d.sm_mhz.map(u64::from)),
                ("mem_mhz", d.mem_mhz.map(u64::from)),
                ("throttle", d.throttle),
            ];
            for (k, v) in nums {
                if let Some(v) = v {
                    let _ = write!(s, " {k}={v}");
                }
            }
            if let Some(n) = &d.name {
                let _ = write!(s, " name=\"{}\"", n.replace(['"', '\n', '#'], "_"));
            }
            if let Some(u) = &d.uuid {
                let _ = write!(s, " uuid={}", u.replace([' ', '"', '\n', '#'], "_"));
            }
            s.push('\n');
        }
        for p in &self.processes {
            let _ = write!(s, "proc gpu={} pid={}", p.gpu, p.pid);
            if let Some(v) = p.fb_used {
                let _ = write!(s, " fb_used={v}");
            }
            if let Some(v) = p.sm_util {
                let _ = write!(s, " sm={v}");
            }
            if let Some(v) = p.mem_util {
                let _ = write!(s, " mem={v}");
            }
            s.push('\n');
        }
        for f in &self.fail {
            let _ = writeln!(s, "fail {f}");
        }
        s
    }
}

/// Writes the state file atomically (temporary file in the same directory, then rename), so the
/// stand-in, which re-reads it on every call, sees either the old or the new state, never half.
pub fn write_state(path: &Path, state: &GpuState) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    std::fs::write(&tmp, state.render())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_keys_only_when_present() {
        let st = GpuState {
            devices: vec![DeviceState { util: Some(7), ..Default::default() }],
            processes: vec![ProcessState { gpu: 0, pid: 42, sm_util: Some(3), ..Default::default() }],
            fail: vec!["nvmlDeviceGetPowerUsage".into()],
        };
        let text = st.render();
        assert!(text.contains("gpu=0 util=7\n"), "{text}");
        assert!(text.contains("proc gpu=0 pid=42 sm=3\n"), "{text}");
        assert!(text.contains("fail nvmlDeviceGetPowerUsage\n"), "{text}");
    }
}
