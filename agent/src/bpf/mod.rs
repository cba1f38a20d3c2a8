//! The kernel boundary: loads the embedded eBPF object, attaches the stream capture (socket layer
//! or its syscall fallback, see [`crate::capture`]), and gives typed access to its maps.
//! Everything above this module works on plain bytes and structs.

mod capture;
mod privileges;
pub mod python;
pub mod sampling;
mod stages;
pub mod tls;
mod unwind;

pub use privileges::{check_daemon_capabilities, check_privileges};
use privileges::{effective_caps, is_permission_error};

use std::path::Path;

use agent_common::{counter, maps, EventKind};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, TracePoint},
    Ebpf, EbpfLoader,
};

/// The eBPF object built by `build.rs` from `agent-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/inferscope"));

/// Syscall fallback: (program, tracepoint category, tracepoint name). Enter programs save the
/// buffer, exit programs copy what really moved.
const SYSCALL_TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("enter_read", "syscalls", "sys_enter_read"),
    ("exit_read", "syscalls", "sys_exit_read"),
    ("enter_recvfrom", "syscalls", "sys_enter_recvfrom"),
    ("exit_recvfrom", "syscalls", "sys_exit_recvfrom"),
    ("enter_readv", "syscalls", "sys_enter_readv"),
    ("exit_readv", "syscalls", "sys_exit_readv"),
    ("enter_recvmsg", "syscalls", "sys_enter_recvmsg"),
    ("exit_recvmsg", "syscalls", "sys_exit_recvmsg"),
    ("enter_write", "syscalls", "sys_enter_write"),
    ("exit_write", "syscalls", "sys_exit_write"),
    ("enter_sendto", "syscalls", "sys_enter_sendto"),
    ("exit_sendto", "syscalls", "sys_exit_sendto"),
    ("enter_writev", "syscalls", "sys_enter_writev"),
    ("exit_writev", "syscalls", "sys_exit_writev"),
    ("enter_sendmsg", "syscalls", "sys_enter_sendmsg"),
    ("exit_sendmsg", "syscalls", "sys_exit_sendmsg"),
    ("exit_accept", "syscalls", "sys_exit_accept"),
    ("exit_accept4", "syscalls", "sys_exit_accept4"),
    ("enter_close", "syscalls", "sys_enter_close"),
];

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "not allowed to load eBPF programs: run as root, or grant CAP_BPF, CAP_PERFMON and \
         CAP_SYS_RESOURCE (effective capabilities here: {effective})"
    )]
    MissingCapability { effective: String },
    #[error("missing capabilities: {missing}; run as root or grant them (effective capabilities here: {effective})")]
    MissingDaemonCapabilities { missing: String, effective: String },
    #[error("tracefs is not available at /sys/kernel/tracing and could not be mounted ({0}); mount it with `mount -t tracefs tracefs /sys/kernel/tracing`")]
    NoTracefs(std::io::Error),
    #[error("the kernel refused eBPF program `{program}`: {reason}")]
    Verifier { program: String, reason: String },
    #[error("cannot attach `{program}` to tracepoint {category}:{name}: {source}")]
    Attach { program: String, category: String, name: String, source: ProgramError },
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF map `{name}`: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("eBPF program `{0}` is missing from the embedded object (build mismatch)")]
    MissingProgram(String),
    #[error("socket-layer capture is not available here: {0}; use --capture auto or syscalls")]
    NoSocketCapture(String),
}

/// Kernel-side counters, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    pub lost_reads: u64,
    pub lost_writes: u64,
    pub lost_accepts: u64,
    pub lost_closes: u64,
    pub args_map_full: u64,
    pub conns_map_full: u64,
    pub read_faults: u64,
    pub truncated: u64,
    pub stage_lost: u64,
    pub stage_too_deep: u64,
    pub stage_unmatched: u64,
    pub stage_stacks_full: u64,
    pub samples_map_full: u64,
    pub user_stack_missing: u64,
    pub user_stacks_full: u64,
    pub offcpu_map_full: u64,
    pub proc_events_lost: u64,
    /// Socket capture: followed socket I/O whose buffer could not be located (io_uring,
    /// sendfile, kernel workers): its length was recorded, its bytes not.
    pub no_payload: u64,
    /// Socket capture: connections claimed by a followed process's first read.
    pub claimed: u64,
    pub listen_ports_full: u64,
    /// Multi-iovec buffers copied through the scratch area.
    pub scratch_copies: u64,
    /// TLS plaintext capture (libssl probes).
    pub tls: tls::TlsKernelCounters,
}

impl KernelCounters {
    pub fn lost_total(&self) -> u64 {
        self.lost_reads + self.lost_writes + self.lost_accepts + self.lost_closes
    }
}

/// One attached uprobe, for [`SocketProbes::detach_stages`].
#[derive(Debug)]
pub struct StageLink {
    program: &'static str,
    id: aya::programs::uprobe::UProbeLinkId,
}

pub struct SocketProbes {
    ebpf: Ebpf,
    /// The stream capture path in use.
    pub mode: crate::capture::CaptureMode,
    /// Why the socket path is not in use (when it is not).
    pub fallback_reason: Option<String>,
    /// Socket capture: listening ports registered per followed process.
    listen_ports: std::collections::HashMap<u16, std::collections::HashSet<u32>>,
    _logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    stages_loaded: bool,
    tls_loaded: bool,
    sched_exit_attached: bool,
    /// Uprobe links attached (entry and return counted separately).
    pub uprobes_attached: usize,
    /// Native unwinding: tables of the files followed processes map, and whether it is on.
    unwind: crate::unwind::Tables,
    unwind_enabled: bool,
    /// `--frame-pointers-only`: never turn unwinding on.
    unwind_disabled: bool,
    /// Python frames in samples (`python.rs`).
    python: python::PythonState,
}

impl SocketProbes {
    /// Loads the object and attaches the stream capture `choice` allows (see [`crate::capture`]).
    /// `ring_bytes` sizes the ring buffer (rounded up to a power-of-two number of pages).
    pub fn load(ring_bytes: u32, choice: crate::capture::CaptureChoice) -> Result<Self, ProbeError> {
        use crate::capture::{CaptureChoice, CaptureMode};
        check_privileges()?;
        ensure_tracefs()?;
        bump_memlock_rlimit();
        let page = page_size();
        let ring = ring_bytes.max(page).next_power_of_two();
        let layout = match choice {
            CaptureChoice::Syscalls => Err("syscall capture was asked for".to_string()),
            _ => crate::capture::socket_layout(),
        };
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(maps::EVENTS, ring);
        let unwind_chunks = crate::unwind::table_chunks();
        loader.map_max_entries(maps::UNWIND_ROWS, unwind_chunks);
        if let Ok(l) = &layout {
            use agent_common::globals as g;
            loader
                .override_global(g::SK_NUM_OFF, &l.sk_num_off, true)
                .override_global(g::SK_PROTOCOL_OFF, &l.sk_protocol_off, true)
                .override_global(g::REGS_WINDOW_OFF, &l.regs_window_off, true)
                .override_global(g::REGS_NR_SLOT, &l.regs_slots[0], true)
                .override_global(g::REGS_ARG1_SLOT, &l.regs_slots[1], true)
                .override_global(g::REGS_ARG2_SLOT, &l.regs_slots[2], true)
                .override_global(g::SYSCALL_NRS, &l.syscall_nrs, true);
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
            if is_permission_error(&e) {
                ProbeError::MissingCapability { effective: effective_caps() }
            } else {
                ProbeError::Load(e)
            }
        })?;
        // The eBPF side logs rare conditions (a full map) through aya-log; without its map the
        // object still works, so a failure here is only a warning.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("eBPF log forwarding unavailable: {e}");
                None
            }
        };
        let socket = layout.and_then(|_| capture::attach_socket(&mut ebpf).map_err(|e| e.to_string()));
        let (mode, fallback_reason) = match socket {
            Ok(()) => {
                log::info!(
                    "capture: socket layer (raw tracepoints sock_recv_length, sock_send_length, tcp_sendmsg_locked, inet_sock_set_state)"
                );
                (CaptureMode::Socket, None)
            }
            Err(reason) if choice == CaptureChoice::Socket => {
                return Err(ProbeError::NoSocketCapture(reason));
            }
            Err(reason) => {
                for &(program, category, name) in SYSCALL_TRACEPOINTS {
                    attach_tracepoint(&mut ebpf, program, category, name)?;
                }
                if choice == CaptureChoice::Syscalls {
                    log::info!("capture: syscall tracepoints (asked for)");
                } else {
                    log::warn!(
                        "capture: syscall tracepoints, because {reason}: every thread on this machine takes the \
                         syscall slow path while inferscope runs"
                    );
                }
                (CaptureMode::Syscalls, Some(reason))
            }
        };
        Ok(Self {
            ebpf,
            mode,
            fallback_reason,
            listen_ports: Default::default(),
            _logger: logger,
            stages_loaded: false,
            tls_loaded: false,
            sched_exit_attached: false,
            uprobes_attached: 0,
            unwind: crate::unwind::Tables::new(unwind_chunks),
            unwind_enabled: false,
            unwind_disabled: false,
            python: python::PythonState::default(),
        })
    }

    /// Thread-exit cleanup of per-thread kernel state (and exit records in daemon mode).
    fn attach_sched_exit(&mut self) -> Result<(), ProbeError> {
        if !self.sched_exit_attached {
            self.attach_tracepoint("sched_exit", "sched", "sched_process_exit")?;
            self.sched_exit_attached = true;
        }
        Ok(())
    }

    fn attach_tracepoint(&mut self, program: &str, category: &str, name: &str) -> Result<(), ProbeError> {
        attach_tracepoint(&mut self.ebpf, program, category, name)
    }

    fn set_setting(&mut self, which: u32, on: bool) -> Result<(), ProbeError> {
        let map = self.ebpf.map_mut(maps::SETTINGS).ok_or(ProbeError::Map {
            name: maps::SETTINGS,
            source: aya::maps::MapError::InvalidName { name: maps::SETTINGS.into() },
        })?;
        let mut arr = aya::maps::Array::<_, u32>::try_from(map)
            .map_err(|source| ProbeError::Map { name: maps::SETTINGS, source })?;
        arr.set(which, u32::from(on), 0).map_err(|source| ProbeError::Map { name: maps::SETTINGS, source })
    }

    /// Processes exec'ing under this exact name (first 15 bytes) are followed from the exec on.
    pub fn watch_comm(&mut self, comm: &str) -> Result<(), ProbeError> {
        let mut key = [0u8; 16];
        let n = comm.len().min(15);
        key[..n].copy_from_slice(&comm.as_bytes()[..n]);
        let mut m: HashMap<_, [u8; 16], u32> = self.map_mut(maps::WATCH_COMMS)?;
        m.insert(key, 1, 0).map_err(|source| ProbeError::Map { name: maps::WATCH_COMMS, source })
    }

    /// Exec records for every process and exit records for targets, for daemon discovery;
    /// returns the ring buffer they arrive on.
    pub fn start_proc_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        self.attach_sched_exit()?;
        self.attach_tracepoint("proc_exec", "sched", "sched_process_exec")?;
        self.set_setting(agent_common::setting::PROC_EVENTS, true)?;
        self.take_ring(maps::PROC_EVENTS)
    }

    /// (map, entries, capacity) of the bounded kernel maps, for fill reporting. Walks every key:
    /// call it at scrape rate, not per event.
    pub fn map_fill(&self) -> Vec<(&'static str, usize, u32)> {
        use agent_common::{limits, ConnInfo, OffCpuStart, SampleKey, StageStack, SyscallArgs};
        let mut fill = vec![(maps::TARGETS, self.hash_len::<u32, u32>(maps::TARGETS), limits::TARGETS)];
        match self.mode {
            crate::capture::CaptureMode::Socket => fill.extend([
                (maps::CONNS, self.hash_len::<u64, ConnInfo>(maps::CONNS), limits::CONNS),
                (maps::LISTEN_PORTS, self.hash_len::<u16, u32>(maps::LISTEN_PORTS), limits::LISTEN_PORTS),
                (maps::PASSIVE, self.lru_len(maps::PASSIVE), limits::PASSIVE),
            ]),
            crate::capture::CaptureMode::Syscalls => fill.extend([
                (maps::FD_CONNS, self.hash_len::<u64, u32>(maps::FD_CONNS), limits::CONNS),
                (maps::ARGS, self.hash_len::<u64, SyscallArgs>(maps::ARGS), limits::ARGS),
            ]),
        }
        fill.extend([
            (maps::STAGE_STACKS, self.hash_len::<u32, StageStack>(maps::STAGE_STACKS), limits::STAGE_STACKS),
            (maps::PROFILE_PHASE, self.hash_len::<u32, u32>(maps::PROFILE_PHASE), limits::TARGETS),
            (maps::SAMPLES, self.per_cpu_hash_len::<SampleKey, u64>(maps::SAMPLES), limits::SAMPLES),
            (maps::OFFCPU, self.per_cpu_hash_len::<SampleKey, u64>(maps::OFFCPU), limits::OFFCPU),
            (maps::OFFCPU_START, self.hash_len::<u32, OffCpuStart>(maps::OFFCPU_START), limits::OFFCPU_START),
            (
                maps::USER_STACKS,
                self.hash_len::<u32, agent_common::unwind::UserStack>(maps::USER_STACKS),
                limits::USER_STACKS,
            ),
            (agent_common::python::maps::PY_STACKS, self.py_stacks_len(), agent_common::python::limits::PY_STACKS),
        ]);
        fill
    }

    /// Keys in hash map `name` (0 when it is missing or of another type).
    fn hash_len<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> usize {
        self.ebpf.map(name).and_then(|m| HashMap::<_, K, V>::try_from(m).ok()).map_or(0, |m| m.keys().count())
    }

    fn lru_len(&self, name: &str) -> usize {
        self.hash_len::<u64, u64>(name)
    }

    fn per_cpu_hash_len<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> usize {
        self.ebpf
            .map(name)
            .and_then(|m| aya::maps::PerCpuHashMap::<_, K, V>::try_from(m).ok())
            .map_or(0, |m| m.keys().count())
    }

    /// Takes the ring buffer out (once) for the reader task.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        self.take_ring(maps::EVENTS)
    }

    /// Takes ring buffer `name` out of the object (once), for its reader.
    fn take_ring(&mut self, name: &'static str) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(ProbeError::Map { name, source: aya::maps::MapError::InvalidName { name: name.into() } })?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map { name, source })
    }

    pub fn counters(&self) -> KernelCounters {
        let Some(map) = self.ebpf.map(maps::COUNTERS) else {
            return KernelCounters::default();
        };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
            return KernelCounters::default();
        };
        let get = |i: u32| arr.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        KernelCounters {
            lost_reads: get(counter::lost_for_kind(EventKind::Read as u16)),
            lost_writes: get(counter::lost_for_kind(EventKind::Write as u16)),
            lost_accepts: get(counter::lost_for_kind(EventKind::Accept as u16)),
            lost_closes: get(counter::lost_for_kind(EventKind::Close as u16)),
            args_map_full: get(counter::ARGS_FULL),
            conns_map_full: get(counter::CONNS_FULL),
            read_faults: get(counter::READ_FAULT),
            truncated: get(counter::TRUNCATED),
            stage_lost: get(counter::STAGE_LOST),
            stage_too_deep: get(counter::STAGE_TOO_DEEP),
            stage_unmatched: get(counter::STAGE_UNMATCHED),
            stage_stacks_full: get(counter::STAGE_STACKS_FULL),
            samples_map_full: get(counter::SAMPLES_FULL),
            user_stack_missing: get(counter::USER_STACK_MISSING),
            user_stacks_full: get(counter::USER_STACKS_FULL),
            offcpu_map_full: get(counter::OFFCPU_FULL),
            proc_events_lost: get(counter::PROC_LOST),
            no_payload: get(counter::NO_PAYLOAD),
            claimed: get(counter::CLAIMED),
            listen_ports_full: get(counter::LISTEN_PORTS_FULL),
            scratch_copies: get(counter::SCRATCH_COPIES),
            tls: self.tls_counters(),
        }
    }

    fn map_mut<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, ProbeError> {
        HashMap::try_from(self.raw_map_mut(name)?).map_err(|source| ProbeError::Map { name, source })
    }

    fn array_mut<V: aya::Pod>(&mut self, name: &'static str) -> Result<aya::maps::Array<&mut MapData, V>, ProbeError> {
        aya::maps::Array::try_from(self.raw_map_mut(name)?).map_err(|source| ProbeError::Map { name, source })
    }

    fn raw_map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, ProbeError> {
        self.ebpf
            .map_mut(name)
            .ok_or(ProbeError::Map { name, source: aya::maps::MapError::InvalidName { name: name.into() } })
    }
}

/// Program `name` of the embedded object, as its program type (`TracePoint`, `UProbe`, …).
fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name).ok_or_else(|| ProbeError::MissingProgram(name.into()))?.try_into().map_err(|source| {
        ProbeError::Attach { program: name.into(), category: "program type".into(), name: name.into(), source }
    })
}

/// Loads tracepoint program `program` and attaches it to `category:name`.
fn attach_tracepoint(ebpf: &mut Ebpf, program: &str, category: &str, name: &str) -> Result<(), ProbeError> {
    let prog: &mut TracePoint = program_mut(ebpf, program)?;
    prog.load().map_err(|e| verifier_error(program, e))?;
    prog.attach(category, name).map_err(|source| ProbeError::Attach {
        program: program.into(),
        category: category.into(),
        name: name.into(),
        source,
    })?;
    Ok(())
}

fn verifier_error(program: &str, e: ProgramError) -> ProbeError {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            // The verifier's reason is its last non-empty lines; the full log goes to debug.
            log::debug!("verifier log for {program}:\n{log}");
            let tail: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
            let reason = tail[tail.len().saturating_sub(3)..].join(" / ");
            ProbeError::Verifier { program: program.into(), reason: format!("{io_error}: {reason}") }
        }
        other => ProbeError::Verifier { program: program.into(), reason: other.to_string() },
    }
}

fn ensure_tracefs() -> Result<(), ProbeError> {
    if Path::new("/sys/kernel/tracing/events").exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    let ok = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()
        .map_err(ProbeError::NoTracefs)?;
    if ok.success() && Path::new("/sys/kernel/tracing/events").exists() {
        Ok(())
    } else {
        Err(ProbeError::NoTracefs(std::io::Error::other("mount -t tracefs failed")))
    }
}

/// Kernels before 5.11 charge eBPF maps to RLIMIT_MEMLOCK; lift it where we may.
fn bump_memlock_rlimit() {
    let r = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) } != 0 {
        log::debug!("could not lift RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u32
    } else {
        4096
    }
}
