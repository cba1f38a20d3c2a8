//! TLS probes: `ssl_enter`/`ssl_exit` on OpenSSL's read/write functions (the attach cookie says
//! which), `ssl_free` on `SSL_free`, and the kernel's TLS counters. Resolution (which files,
//! which offsets) is in [`crate::tls::resolve`].

use std::path::Path;

use agent_common::tls::{counter, maps as tls_maps, STATE_ENABLED};
use aya::{
    maps::PerCpuArray,
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        UProbe,
    },
};

use super::{program_mut, verifier_error, ProbeError, SocketProbes, StageLink};

const PROGRAMS: [&str; 3] = ["ssl_enter", "ssl_exit", "ssl_free"];

/// What the kernel side of TLS capture counted, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TlsKernelCounters {
    /// Plaintext records sent.
    pub plaintext: u64,
    /// Socket I/O of known-TLS sockets dropped in the kernel (ciphertext, never parsed).
    pub ciphertext_dropped: u64,
    /// SSL calls that moved bytes on a connection that could not be told (not sent): reads
    /// with no socket to go by, and writes not linked by the thread's next socket write.
    pub unmapped: u64,
    /// Writes whose connection was told only by the thread's next socket write (Node's
    /// opening SETTINGS, before any plaintext read mapped its `SSL *`): sent, not lost.
    pub linked_late: u64,
    /// SSL calls not followed because the per-thread call map was full.
    pub calls_full: u64,
}

impl SocketProbes {
    /// Loads the TLS programs (once) and switches the socket programs' TLS bookkeeping on.
    fn load_tls_programs(&mut self) -> Result<(), ProbeError> {
        if self.tls_loaded {
            return Ok(());
        }
        for name in PROGRAMS {
            let prog: &mut UProbe = program_mut(&mut self.ebpf, name)?;
            prog.load().map_err(|e| verifier_error(name, e))?;
        }
        let mut state = self.array_mut::<u32>(tls_maps::TLS_STATE)?;
        state.set(STATE_ENABLED, 1, 0).map_err(|source| ProbeError::Map { name: tls_maps::TLS_STATE, source })?;
        self.tls_loaded = true;
        Ok(())
    }

    /// Probes the TLS functions of `binary` for process `pid`: `calls` are (file offset, call
    /// kind cookie) of the read/write functions, `free` the offset of `SSL_free` if exported.
    pub fn attach_tls(
        &mut self,
        binary: &Path,
        calls: &[(u64, u32)],
        free: Option<u64>,
        pid: u32,
    ) -> Result<Vec<StageLink>, ProbeError> {
        self.load_tls_programs()?;
        let scope = std::num::NonZeroU32::new(pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let mut points: Vec<(&'static str, u64, u32)> = Vec::new();
        for &(offset, kind) in calls {
            points.push(("ssl_enter", offset, kind));
            points.push(("ssl_exit", offset, kind));
        }
        if let Some(offset) = free {
            points.push(("ssl_free", offset, 0));
        }
        let mut links = Vec::new();
        for (name, offset, cookie) in points {
            let prog: &mut UProbe = program_mut(&mut self.ebpf, name)?;
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(offset),
                cookie: Some(cookie as u64),
            };
            let id = match prog.attach(point, binary, scope) {
                Ok(id) => id,
                Err(source) => {
                    self.detach_stages(links);
                    return Err(ProbeError::Attach {
                        program: name.into(),
                        category: "uprobe".into(),
                        name: format!("{}+{offset:#x}", binary.display()),
                        source,
                    });
                }
            };
            self.uprobes_attached += 1;
            links.push(StageLink { program: name, id });
        }
        Ok(links)
    }

    pub fn tls_counters(&self) -> TlsKernelCounters {
        let Some(arr) = self.ebpf.map(tls_maps::TLS_COUNTERS).and_then(|m| PerCpuArray::<_, u64>::try_from(m).ok())
        else {
            return TlsKernelCounters::default();
        };
        let get = |i: u32| arr.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        TlsKernelCounters {
            plaintext: get(counter::PLAINTEXT),
            ciphertext_dropped: get(counter::CIPHERTEXT_DROPPED),
            // A deferred write not linked by the end is lost like any other unmapped call.
            unmapped: get(counter::UNMAPPED) + get(counter::DEFERRED).saturating_sub(get(counter::LINKED)),
            linked_late: get(counter::LINKED),
            calls_full: get(counter::CALLS_FULL),
        }
    }
}
