//! The kernel side of the native unwinder: loads `cpu_unwind` into the tail-call slot, writes
//! each followed process's unwind tables (`crate::unwind`) into `UNWIND_ROWS` and
//! `UNWIND_MAPPINGS`, and reads unwound stacks back from `USER_STACKS`.

use agent_common::{
    maps, setting,
    unwind::{ProcMappings, RowChunk, UserStack},
};
use aya::{
    maps::{Array, HashMap, ProgramArray},
    programs::{PerfEvent, TracePoint},
};

use super::{program_mut, verifier_error, ProbeError, SocketProbes};

fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

impl SocketProbes {
    /// Loads the unwinding program and switches `.eh_frame` unwinding on for processes that
    /// have tables (`refresh_unwind`). Once; later calls do nothing.
    pub fn enable_unwind(&mut self) -> Result<(), ProbeError> {
        if self.unwind_enabled {
            return Ok(());
        }
        let prog: &mut PerfEvent = program_mut(&mut self.ebpf, "cpu_unwind")?;
        prog.load().map_err(|e| verifier_error("cpu_unwind", e))?;
        let fd = prog
            .fd()
            .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::from))
            .map_err(|e| verifier_error("cpu_unwind", e))?;
        self.set_tail_call(maps::UNWIND_PROGS, &fd)?;
        // Off-CPU stacks use the same tables through a tracepoint twin; without it they are
        // taken by frame pointers and CPU samples are unwound as before.
        if let Err(e) = self.load_offcpu_unwind() {
            log::warn!("off-CPU user stacks need frame pointers: {e}");
        }
        self.set_setting(setting::UNWIND, true)?;
        self.unwind_enabled = true;
        Ok(())
    }

    fn load_offcpu_unwind(&mut self) -> Result<(), ProbeError> {
        let prog: &mut TracePoint = program_mut(&mut self.ebpf, "offcpu_unwind")?;
        prog.load().map_err(|e| verifier_error("offcpu_unwind", e))?;
        let fd = prog
            .fd()
            .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::from))
            .map_err(|e| verifier_error("offcpu_unwind", e))?;
        self.set_tail_call(maps::OFFCPU_UNWIND_PROGS, &fd)
    }

    /// Puts `fd` in slot 0 of the program array `name`.
    fn set_tail_call(&mut self, name: &'static str, fd: &aya::programs::ProgramFd) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::Map { name, source: aya::maps::MapError::InvalidName { name: name.into() } })?;
        let mut progs = ProgramArray::try_from(map).map_err(map_error(name))?;
        progs.set(0, fd, 0).map_err(map_error(name))
    }

    /// Looks at `pid`'s executable mappings and, when they changed (start, dlopen), compiles
    /// tables for new files and writes its mapping table. Cheap when nothing changed (one read
    /// of /proc/PID/maps). Returns whether anything was written.
    pub fn refresh_unwind(&mut self, pid: u32) -> Result<bool, ProbeError> {
        if !self.unwind_enabled {
            return Ok(false);
        }
        let update = match self.unwind.refresh(pid) {
            Ok(Some(u)) => u,
            Ok(None) => return Ok(false),
            Err(e) => {
                log::debug!("unwind tables of pid {pid}: {e}");
                return Ok(false);
            }
        };
        {
            let map = self.ebpf.map_mut(maps::UNWIND_ROWS).ok_or(ProbeError::Map {
                name: maps::UNWIND_ROWS,
                source: aya::maps::MapError::InvalidName { name: maps::UNWIND_ROWS.into() },
            })?;
            let mut rows: Array<_, RowChunk> = Array::try_from(map).map_err(map_error(maps::UNWIND_ROWS))?;
            for (index, chunk) in &update.chunks {
                rows.set(*index, chunk, 0).map_err(map_error(maps::UNWIND_ROWS))?;
            }
        }
        let mut procs: HashMap<_, u32, ProcMappings> = self.map_mut(maps::UNWIND_MAPPINGS)?;
        procs.insert(pid, *update.mappings, 0).map_err(map_error(maps::UNWIND_MAPPINGS))?;
        Ok(true)
    }

    /// Drops `pid`'s mapping table (and its files' rows when no other process maps them).
    pub fn forget_unwind(&mut self, pid: u32) {
        if !self.unwind.follows(pid) {
            return;
        }
        if let Ok(mut procs) = self.map_mut::<u32, ProcMappings>(maps::UNWIND_MAPPINGS) {
            let _ = procs.remove(&pid);
        }
        self.unwind.forget(pid);
    }

    /// Frame pointers only from now on (`--frame-pointers-only`): no tables are built and the
    /// unwinding program is never loaded.
    pub fn disable_unwind(&mut self) {
        self.unwind_disabled = true;
    }

    pub fn unwind_stats(&self) -> Option<crate::unwind::TableStats> {
        self.unwind_enabled.then_some(self.unwind.stats)
    }

    /// Unwound user stacks by id: frames (leaf first) and how the walk ended.
    pub(super) fn user_stack(&self, id: i32) -> Option<(Vec<u64>, u32)> {
        let map = self.ebpf.map(maps::USER_STACKS)?;
        let stacks: HashMap<_, u32, UserStack> = HashMap::try_from(map).ok()?;
        let s = stacks.get(&(id as u32), 0).ok()?;
        let len = (s.len as usize).min(s.pcs.len());
        Some((s.pcs[..len].to_vec(), s.outcome))
    }

    /// Removes unwound user stacks (process gone).
    pub(super) fn remove_user_stacks(&mut self, ids: &[i32]) {
        if let Ok(mut m) = self.map_mut::<u32, UserStack>(maps::USER_STACKS) {
            for id in ids {
                let _ = m.remove(&(*id as u32));
            }
        }
    }
}
