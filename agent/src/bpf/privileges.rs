//! What this process may do: capabilities checked before touching the kernel, each missing one
//! named with what it is for.

use super::ProbeError;

pub(super) fn is_permission_error(e: &aya::EbpfError) -> bool {
    let text = format!("{e:?}");
    text.contains("PermissionDenied") || text.contains("Operation not permitted")
}

/// CAP_SYS_ADMIN (21), CAP_PERFMON (38), CAP_BPF (39).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn cap_eff() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

pub(super) fn effective_caps() -> String {
    match cap_eff() {
        Some(c) => format!("{c:#x}"),
        None => "unknown".into(),
    }
}

/// Fails early, with what to do, when this process cannot load eBPF at all.
pub fn check_privileges() -> Result<(), ProbeError> {
    let Some(caps) = cap_eff() else { return Ok(()) };
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(ProbeError::MissingCapability { effective: effective_caps() })
    }
}

/// Capabilities the daemon needs, with what each is for.
const DAEMON_CAPS: &[(u32, &str, &str)] = &[
    (CAP_BPF, "CAP_BPF", "load eBPF programs and maps"),
    (CAP_PERFMON, "CAP_PERFMON", "attach tracepoints, uprobes and perf events"),
    (19, "CAP_SYS_PTRACE", "read other processes' /proc/PID/maps, fds and root"),
    (2, "CAP_DAC_READ_SEARCH", "open target binaries and /proc files of other users"),
];

/// The daemon refuses to start without what it needs, naming each missing capability.
/// (CAP_SYS_RESOURCE only matters for the memlock limit of kernels before 5.11: warned about.)
pub fn check_daemon_capabilities() -> Result<(), ProbeError> {
    let Some(caps) = cap_eff() else { return Ok(()) };
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    let missing: Vec<String> = DAEMON_CAPS
        .iter()
        .filter(|(bit, _, _)| !has(*bit) && !(has(CAP_SYS_ADMIN) && (*bit == CAP_BPF || *bit == CAP_PERFMON)))
        .map(|(_, name, why)| format!("{name} ({why})"))
        .collect();
    if !missing.is_empty() {
        return Err(ProbeError::MissingDaemonCapabilities { missing: missing.join(", "), effective: effective_caps() });
    }
    if !has(24) {
        log::info!("CAP_SYS_RESOURCE is absent: fine on kernels >= 5.11 (eBPF memory is not charged to memlock)");
    }
    Ok(())
}
