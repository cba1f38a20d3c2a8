//! CPU samples (perf cpu-clock on every CPU) and off-CPU intervals (sched_switch), counted in the
//! kernel per (process, phase, stacks); the phase each process is in is written here.

use agent_common::{maps, unwind::USER_STACK_ID_BIT};
use aya::{
    maps::HashMap,
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        PerfEvent, ProgramError,
    },
};

use super::{program_mut, verifier_error, ProbeError, SocketProbes};

impl SocketProbes {
    /// Records how long threads of profiled processes block, and where (sched_switch).
    pub fn start_offcpu(&mut self) -> Result<(), ProbeError> {
        self.attach_sched_exit()?;
        self.attach_tracepoint("offcpu_switch", "sched", "sched_switch")?;
        self.set_setting(agent_common::setting::OFFCPU, true)
    }

    /// Samples every CPU at `hz` with the software cpu-clock (no hardware PMU needed); only
    /// processes with a phase entry are counted.
    pub fn start_profiler(&mut self, pid: u32, hz: u64) -> Result<(), ProbeError> {
        let prog: &mut PerfEvent = program_mut(&mut self.ebpf, "cpu_sample")?;
        prog.load().map_err(|e| verifier_error("cpu_sample", e))?;
        let cpus = aya::util::online_cpus().map_err(|(_, e)| ProbeError::Attach {
            program: "cpu_sample".into(),
            category: "perf_event".into(),
            name: "online cpus".into(),
            source: ProgramError::IOError(e),
        })?;
        for cpu in cpus {
            prog.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(hz),
                false,
            )
            .map_err(|source| ProbeError::Attach {
                program: "cpu_sample".into(),
                category: "perf_event".into(),
                name: format!("cpu-clock on cpu {cpu}"),
                source,
            })?;
        }
        // Tables first: the process's samples are counted from its phase entry on, and each
        // of them should find its mapping table there.
        self.start_unwind(pid);
        self.set_phase(pid, agent_common::phase::IDLE)
    }

    /// `.eh_frame` unwinding for `pid` (its tables built now); without it (the program refused,
    /// tables not buildable) user stacks are taken by frame pointers as before.
    pub fn start_unwind(&mut self, pid: u32) {
        if self.unwind_disabled {
            return;
        }
        if let Err(e) = self.enable_unwind() {
            log::warn!("native unwinding is off, user stacks need frame pointers: {e}");
            return;
        }
        if let Err(e) = self.refresh_unwind(pid) {
            log::warn!("unwind tables of pid {pid}: {e}");
        }
        self.start_python(pid);
    }

    pub fn set_phase(&mut self, pid: u32, phase: u32) -> Result<(), ProbeError> {
        let mut m: HashMap<_, u32, u32> = self.map_mut(maps::PROFILE_PHASE)?;
        m.insert(pid, phase, 0).map_err(|source| ProbeError::Map { name: maps::PROFILE_PHASE, source })
    }

    /// Stops profiling `pid` and drops its sample and off-CPU counts (the process is gone).
    pub fn forget_profile(&mut self, pid: u32) {
        if let Ok(mut m) = self.map_mut::<u32, u32>(maps::PROFILE_PHASE) {
            let _ = m.remove(&pid);
        }
        self.forget_unwind(pid);
        self.forget_python(pid);
        let mut unwound = Vec::new();
        for name in [maps::SAMPLES, maps::OFFCPU] {
            let Some(map) = self.ebpf.map_mut(name) else { continue };
            let Ok(mut m) = aya::maps::PerCpuHashMap::<_, agent_common::SampleKey, u64>::try_from(map) else {
                continue;
            };
            let keys: Vec<_> = m.keys().filter_map(Result::ok).filter(|k| k.tgid == pid).collect();
            for k in &keys {
                let _ = m.remove(k);
            }
            unwound.extend(keys.iter().map(|k| k.user_stack).filter(|&id| id >= USER_STACK_ID_BIT));
        }
        self.remove_py_stacks(&unwound);
        self.remove_user_stacks(&unwound);
    }

    /// Sample counts (summed over CPUs) and the stacks they reference (leaf first).
    pub fn read_samples(&self) -> Result<RawProfile, ProbeError> {
        self.read_stack_counts(maps::SAMPLES)
    }

    /// Off-CPU nanoseconds per (process, phase, stacks), summed over CPUs.
    pub fn read_offcpu(&self) -> Result<RawProfile, ProbeError> {
        self.read_stack_counts(maps::OFFCPU)
    }

    fn read_stack_counts(&self, name: &'static str) -> Result<RawProfile, ProbeError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(ProbeError::Map { name, source: aya::maps::MapError::InvalidName { name: name.into() } })?;
        let counts = aya::maps::PerCpuHashMap::<_, agent_common::SampleKey, u64>::try_from(map)
            .map_err(|source| ProbeError::Map { name, source })?;
        let map = self.ebpf.map(maps::STACKS).ok_or(ProbeError::Map {
            name: maps::STACKS,
            source: aya::maps::MapError::InvalidName { name: maps::STACKS.into() },
        })?;
        let stacks =
            aya::maps::StackTraceMap::try_from(map).map_err(|source| ProbeError::Map { name: maps::STACKS, source })?;
        let mut raw = RawProfile::default();
        for item in counts.iter().filter_map(Result::ok) {
            let (key, per_cpu) = item;
            let n: u64 = per_cpu.iter().sum();
            raw.samples.push((key, n));
            if key.user_stack >= USER_STACK_ID_BIT && !raw.stacks.contains_key(&key.user_stack) {
                if let Some((pcs, how)) = self.user_stack(key.user_stack) {
                    raw.stacks.insert(key.user_stack, pcs);
                    raw.outcomes.insert(key.user_stack, how);
                }
                if let Some(py) = self.py_stack(key.user_stack) {
                    raw.python.insert(key.user_stack, py);
                }
            }
            for id in [key.user_stack, key.kernel_stack] {
                if (0..USER_STACK_ID_BIT).contains(&id) && !raw.stacks.contains_key(&id) {
                    if let Ok(st) = stacks.get(&(id as u32), 0) {
                        raw.stacks.insert(id, st.frames().iter().map(|f| f.ip).collect());
                    }
                }
            }
        }
        Ok(raw)
    }
}

/// What the kernel counted: per key, and the stacks the keys refer to (leaf first).
#[derive(Debug, Default, Clone)]
pub struct RawProfile {
    pub samples: Vec<(agent_common::SampleKey, u64)>,
    pub stacks: std::collections::HashMap<i32, Vec<u64>>,
    /// How the walk of each unwound user stack ended (`agent_common::unwind::outcome`); stacks
    /// taken by frame pointers (`bpf_get_stackid`) have none.
    pub outcomes: std::collections::HashMap<i32, u32>,
    /// The Python frames walked with each unwound user stack of a CPython process.
    pub python: std::collections::HashMap<i32, super::python::PyFrames>,
}
