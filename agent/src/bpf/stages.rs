//! Stage probes: uprobe/uretprobe pairs with the stage id as the attach cookie, and the ring
//! their finished calls arrive on.

use std::path::Path;

use agent_common::maps;
use aya::{
    maps::{MapData, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        UProbe,
    },
};

use super::{program_mut, verifier_error, ProbeError, SocketProbes, StageLink};

impl SocketProbes {
    /// Loads the stage programs (once) and the thread-exit cleanup tracepoint.
    pub fn load_stage_programs(&mut self) -> Result<(), ProbeError> {
        if self.stages_loaded {
            return Ok(());
        }
        for name in ["stage_enter", "stage_exit"] {
            let prog: &mut UProbe = program_mut(&mut self.ebpf, name)?;
            prog.load().map_err(|e| verifier_error(name, e))?;
        }
        self.attach_sched_exit()?;
        self.stages_loaded = true;
        Ok(())
    }

    /// Times every call of the function at `file_offset` in `binary` made by process `pid`,
    /// reporting it as stage `stage` (the attach cookie). `with_return: false` counts entries
    /// only (used where return probes are unsafe).
    pub fn attach_stage(
        &mut self,
        stage: u32,
        binary: &Path,
        file_offset: u64,
        pid: u32,
        with_return: bool,
    ) -> Result<Vec<StageLink>, ProbeError> {
        self.load_stage_programs()?;
        let scope = std::num::NonZeroU32::new(pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let programs: &[&str] = if with_return { &["stage_enter", "stage_exit"] } else { &["stage_enter"] };
        let mut links = Vec::new();
        for &name in programs {
            let prog: &mut UProbe = program_mut(&mut self.ebpf, name)?;
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(file_offset),
                cookie: Some(stage as u64),
            };
            let id = prog.attach(point, binary, scope).map_err(|source| ProbeError::Attach {
                program: name.into(),
                category: "uprobe".into(),
                name: format!("{}+{file_offset:#x}", binary.display()),
                source,
            })?;
            self.uprobes_attached += 1;
            links.push(StageLink { program: name, id });
        }
        Ok(links)
    }

    /// Removes uprobes attached by [`attach_stage`](Self::attach_stage) (the process is gone or
    /// runs another program now); returns how many were removed.
    pub fn detach_stages(&mut self, links: Vec<StageLink>) -> usize {
        let mut removed = 0;
        for link in links {
            let Ok(prog) = program_mut::<UProbe>(&mut self.ebpf, link.program) else { continue };
            match prog.detach(link.id) {
                Ok(()) => removed += 1,
                Err(e) => log::warn!("detaching a {} uprobe: {e}", link.program),
            }
        }
        self.uprobes_attached = self.uprobes_attached.saturating_sub(removed);
        removed
    }

    pub fn take_stage_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        self.take_ring(maps::STAGE_EVENTS)
    }
}
