//! The stream-capture side of the kernel boundary: attaching the socket-layer programs, and
//! following / unfollowing a process on whichever capture path is in use.

use agent_common::{conn_key, maps, send_slot, ConnInfo, SendSlot};
use aya::{
    maps::{Array, HashMap},
    programs::{ProgramError, RawTracePoint},
    Ebpf,
};

use super::{program_mut, verifier_error, ProbeError, SocketProbes};
use crate::capture::{CaptureMode, SOCKET_HOOKS};

/// Loads and attaches the socket-layer programs; any failure leaves the syscall fallback to the
/// caller (nothing of the socket path stays attached then: links drop with their programs).
pub(super) fn attach_socket(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let mut attached = Vec::new();
    for &(program, tracepoint) in SOCKET_HOOKS {
        let prog: &mut RawTracePoint = program_mut(ebpf, program)?;
        let result = prog.load().map_err(|e| verifier_error(program, e)).and_then(|()| {
            prog.attach(tracepoint).map_err(|source: ProgramError| ProbeError::Attach {
                program: program.into(),
                category: "raw_tracepoint".into(),
                name: tracepoint.into(),
                source,
            })
        });
        if let Err(e) = result {
            for done in attached {
                if let Ok(p) = program_mut::<RawTracePoint>(ebpf, done) {
                    let _ = p.unload();
                }
            }
            return Err(e);
        }
        attached.push(program);
    }
    Ok(())
}

impl SocketProbes {
    /// Starts following process `tgid`. Socket capture: its listening ports are registered, so
    /// that its connections (accepted before or after this moment) are claimed by their first
    /// read. Syscall capture: connections it already holds are found in /proc. Returns the
    /// connection keys the parser should treat as joined mid-stream (syscall capture only).
    pub fn follow(&mut self, tgid: u32) -> Result<Vec<u64>, ProbeError> {
        match self.mode {
            CaptureMode::Socket => {
                // Followed first, ports second: a listen() from here on is registered by the
                // kernel, one before is in /proc. Sockets a read judged "not accepted" in between
                // are judged again below.
                self.add_target(tgid)?;
                let ports = crate::procfs::listening_ports(tgid);
                {
                    let mut m: HashMap<_, u16, u32> = self.map_mut(maps::LISTEN_PORTS)?;
                    for &port in &ports {
                        m.insert(port, tgid, 0)
                            .map_err(|source| ProbeError::Map { name: maps::LISTEN_PORTS, source })?;
                    }
                }
                for port in ports {
                    self.listen_ports.entry(port).or_default().insert(tgid);
                }
                self.forget_sockets(tgid, true)?;
                Ok(Vec::new())
            }
            CaptureMode::Syscalls => {
                self.add_target(tgid)?;
                let fds = crate::procfs::inbound_connection_fds(tgid);
                let mut m: HashMap<_, u64, u32> = self.map_mut(maps::FD_CONNS)?;
                let mut joined = Vec::new();
                for fd in fds {
                    m.insert(conn_key(tgid, fd), 0, 0)
                        .map_err(|source| ProbeError::Map { name: maps::FD_CONNS, source })?;
                    joined.push(fd as u32 as u64);
                }
                Ok(joined)
            }
        }
    }

    /// Stops following `tgid` and drops every kernel entry it held; returns the connections freed.
    pub fn unfollow(&mut self, tgid: u32) -> Result<usize, ProbeError> {
        {
            let mut m: HashMap<_, u32, u32> = self.map_mut(maps::TARGETS)?;
            match m.remove(&tgid) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(ProbeError::Map { name: maps::TARGETS, source }),
            }
        }
        match self.mode {
            CaptureMode::Socket => {
                let freed = self.forget_sockets(tgid, false)?;
                let mut gone = Vec::new();
                self.listen_ports.retain(|&port, users| {
                    users.remove(&tgid);
                    if users.is_empty() {
                        gone.push(port);
                    }
                    !users.is_empty()
                });
                let mut m: HashMap<_, u16, u32> = self.map_mut(maps::LISTEN_PORTS)?;
                // Ports the kernel registered itself (listen() after follow) carry the tgid.
                let kernel_added: Vec<u16> = m
                    .iter()
                    .filter_map(Result::ok)
                    .filter(|&(p, t)| t == tgid && !gone.contains(&p))
                    .map(|(p, _)| p)
                    .collect();
                for port in gone.into_iter().chain(kernel_added) {
                    let _ = m.remove(&port);
                }
                Ok(freed)
            }
            CaptureMode::Syscalls => {
                let mut m: HashMap<_, u64, u32> = self.map_mut(maps::FD_CONNS)?;
                let keys: Vec<u64> = m.keys().filter_map(Result::ok).filter(|k| (k >> 32) as u32 == tgid).collect();
                for k in &keys {
                    let _ = m.remove(k);
                }
                Ok(keys.len())
            }
        }
    }

    fn add_target(&mut self, tgid: u32) -> Result<(), ProbeError> {
        let mut m: HashMap<_, u32, u32> = self.map_mut(maps::TARGETS)?;
        m.insert(tgid, 0, 0).map_err(|source| ProbeError::Map { name: maps::TARGETS, source })
    }

    /// Removes `CONNS` entries of `tgid` (only the "not an accepted connection" ones when
    /// `outbound_only`); returns how many followed connections were removed.
    fn forget_sockets(&mut self, tgid: u32, outbound_only: bool) -> Result<usize, ProbeError> {
        let mut m: HashMap<_, u64, ConnInfo> = self.map_mut(maps::CONNS)?;
        let doomed: Vec<(u64, bool)> = m
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, c)| c.tgid == tgid && (!outbound_only || c.id == 0))
            .map(|(sk, c)| (sk, c.id != 0))
            .collect();
        for (sk, _) in &doomed {
            let _ = m.remove(sk);
        }
        // A cached send slot of a forgotten socket must go too: the kernel frees slots only at
        // CLOSE, and a socket we stop following may live on (and its address be reused later).
        let mut slots: Array<_, SendSlot> = self.array_mut(maps::SEND_SLOTS)?;
        for &(sk, followed) in &doomed {
            let i = send_slot(sk);
            if followed && slots.get(&i, 0).is_ok_and(|s| s.sk == sk) {
                let _ = slots.set(i, SendSlot::default(), 0);
            }
        }
        Ok(doomed.iter().filter(|(_, followed)| *followed).count())
    }

    /// Connections followed in the kernel right now (for fill reporting).
    pub fn tracked_connections(&self) -> usize {
        match self.mode {
            CaptureMode::Socket => self
                .ebpf
                .map(maps::CONNS)
                .and_then(|m| HashMap::<_, u64, ConnInfo>::try_from(m).ok())
                .map_or(0, |m| m.iter().filter_map(Result::ok).filter(|(_, c)| c.id != 0).count()),
            CaptureMode::Syscalls => self.hash_len::<u64, u32>(maps::FD_CONNS),
        }
    }
}
