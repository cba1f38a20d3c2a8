//! The kernel side of Python unwinding: loads `cpu_python` into its tail-call slot, writes each
//! profiled CPython process's layout (`crate::python`) into `PY_PROCS`, and reads the Python
//! frames of unwound stacks back from `PY_STACKS`.

use std::collections::HashSet;

use agent_common::python::{maps as pymaps, PyProc, PyStack};
use aya::{
    maps::{HashMap, PerCpuArray, ProgramArray},
    programs::PerfEvent,
};

use super::{program_mut, verifier_error, ProbeError, SocketProbes};
use crate::python::{detect, NotPython};

/// What the probes keep about Python unwinding.
#[derive(Debug, Default)]
pub struct PythonState {
    /// `cpu_python` is loaded and in its slot.
    enabled: bool,
    /// `task_struct.thread.fsbase`, from the kernel's BTF.
    fsbase_off: Option<u32>,
    /// Processes with a layout in `PY_PROCS`.
    procs: HashSet<u32>,
    /// Processes already told about (one line each).
    said: HashSet<u32>,
}

/// The Python frames of one sample, leaf first, and how the walk went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyFrames {
    pub frames: Vec<agent_common::python::PyFrame>,
    pub status: u32,
}

fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

impl SocketProbes {
    /// Walks `pid`'s Python frames in its samples when it runs a CPython we support; says once
    /// why not when it runs one we cannot walk. Needs native unwinding on (`start_unwind`).
    pub fn start_python(&mut self, pid: u32) {
        if !self.unwind_enabled || self.python.procs.contains(&pid) {
            return;
        }
        let found = match detect(pid) {
            Ok(d) => d,
            Err(NotPython::NoInterpreter) => return,
            Err(NotPython::Cannot(reason)) => {
                if self.python.said.insert(pid) {
                    log::warn!("cannot unwind Python in {pid} ({reason}); its native frames are still shown");
                }
                return;
            }
        };
        if let Err(e) = self.enable_python().and_then(|()| {
            let fsbase = self.python.fsbase_off.unwrap_or_default();
            let proc = PyProc {
                interp_head_addr: found.runtime + found.layout.runtime_interpreters_head,
                task_fsbase: fsbase,
                ..found.layout.walk
            };
            let mut procs: HashMap<_, u32, PyProc> = self.map_mut(pymaps::PY_PROCS).map_err(|e| e.to_string())?;
            procs.insert(pid, proc, 0).map_err(|e| map_error(pymaps::PY_PROCS)(e).to_string())
        }) {
            if self.python.said.insert(pid) {
                log::warn!("cannot unwind Python in {pid} ({e}); its native frames are still shown");
            }
            return;
        }
        let (a, b, c) = found.version;
        log::info!("unwinding Python {a}.{b}.{c} in {pid} ({})", found.file.display());
        self.python.procs.insert(pid);
    }

    fn enable_python(&mut self) -> Result<(), String> {
        self.load_python().map_err(|e| e.to_string())
    }

    fn load_python(&mut self) -> Result<(), ProbeError> {
        if self.python.enabled {
            return Ok(());
        }
        let fsbase = crate::capture::btf::Btf::from_sys_fs()
            .map_err(|e| e.to_string())
            .and_then(|btf| btf.member("task_struct", &["thread", "fsbase"]).map_err(|e| e.to_string()))
            .map_err(|e| {
                ProbeError::MissingProgram(format!(
                    "cpu_python: no task_struct.thread.fsbase in the kernel's BTF ({e})"
                ))
            })?;
        self.python.fsbase_off = Some(fsbase.offset);
        let prog: &mut PerfEvent = program_mut(&mut self.ebpf, "cpu_python")?;
        prog.load().map_err(|e| verifier_error("cpu_python", e))?;
        let fd = prog
            .fd()
            .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::from))
            .map_err(|e| verifier_error("cpu_python", e))?;
        let map = self.raw_map_mut(pymaps::PY_PROGS)?;
        let mut progs = ProgramArray::try_from(map).map_err(map_error(pymaps::PY_PROGS))?;
        progs.set(0, &fd, 0).map_err(map_error(pymaps::PY_PROGS))?;
        self.python.enabled = true;
        Ok(())
    }

    /// Stops walking `pid`'s Python frames (it exited or exec'ed).
    pub fn forget_python(&mut self, pid: u32) {
        self.python.said.remove(&pid);
        if self.python.procs.remove(&pid) {
            if let Ok(mut procs) = self.map_mut::<u32, PyProc>(pymaps::PY_PROCS) {
                let _ = procs.remove(&pid);
            }
        }
    }

    /// The Python frames stored with unwound stack `id`, if any.
    pub(super) fn py_stack(&self, id: i32) -> Option<PyFrames> {
        if !self.python.enabled {
            return None;
        }
        let stacks: HashMap<_, u32, PyStack> = HashMap::try_from(self.ebpf.map(pymaps::PY_STACKS)?).ok()?;
        let s = stacks.get(&(id as u32), 0).ok()?;
        let len = (s.len as usize).min(s.frames.len());
        Some(PyFrames { frames: s.frames[..len].to_vec(), status: s.status })
    }

    pub(super) fn remove_py_stacks(&mut self, ids: &[i32]) {
        if !self.python.enabled {
            return;
        }
        if let Ok(mut m) = self.map_mut::<u32, PyStack>(pymaps::PY_STACKS) {
            for id in ids {
                let _ = m.remove(&(*id as u32));
            }
        }
    }

    /// Kernel counters of the Python walk, summed over CPUs (`agent_common::python::counter`).
    pub fn python_counters(&self) -> Option<[u64; agent_common::python::counter::COUNT as usize]> {
        if !self.python.enabled {
            return None;
        }
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map(pymaps::PY_COUNTERS)?).ok()?;
        let mut out = [0u64; agent_common::python::counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = m.get(&(i as u32), 0).map(|v| v.iter().sum()).unwrap_or(0);
        }
        Some(out)
    }

    /// Sends each sample of a Python process with its time and thread to the returned ring
    /// (sampled Python stages, `crate::stages::sampled`).
    pub fn start_py_samples(&mut self) -> Result<aya::maps::RingBuf<aya::maps::MapData>, ProbeError> {
        self.set_setting(agent_common::setting::PY_SAMPLES, true)?;
        self.take_ring(pymaps::PY_SAMPLES)
    }

    /// Python stacks stored now (for map-fill reporting).
    pub fn py_stacks_len(&self) -> usize {
        self.ebpf
            .map(pymaps::PY_STACKS)
            .and_then(|m| HashMap::<_, u32, PyStack>::try_from(m).ok())
            .map_or(0, |m| m.keys().count())
    }
}
