//! Which capture path the stream timing uses, decided once at start.
//!
//! - **socket** (default): raw tracepoints on the socket layer (`sock_send_length`,
//!   `sock_recv_length`, `inet_sock_set_state`; Linux ≥ 6.3). They fire only on socket I/O, so
//!   processes we do not follow pay nothing on their syscalls.
//! - **syscalls** (fallback): `syscalls:sys_{enter,exit}_*` tracepoints, for kernels without the
//!   socket tracepoints or without BTF. Correct everywhere, but every thread of the machine takes
//!   the syscall slow path while they are attached.
//!
//! The socket path reads a few kernel struct fields whose offsets come from the running kernel's
//! BTF ([`btf`]), and this architecture's syscall numbers; without either it is not offered.

pub mod btf;

use agent_common::syscall_nr;

/// The path in use, for the report, the JSON and `inferscope_capture_info{mode}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    Socket,
    Syscalls,
}

impl CaptureMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Socket => "socket",
            Self::Syscalls => "syscalls",
        }
    }
}

/// What the user asked for (`--capture`, config `capture`, env `INFERSCOPE_CAPTURE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CaptureChoice {
    /// The socket layer where the kernel allows it, else syscall tracepoints.
    #[default]
    Auto,
    /// The socket layer, or fail.
    Socket,
    /// Syscall tracepoints (the fallback), even where the socket layer works.
    Syscalls,
}

impl CaptureChoice {
    /// `INFERSCOPE_CAPTURE=socket|syscalls|auto` overrides the command line and config (tests force
    /// the fallback with it).
    pub fn with_env(self) -> Self {
        match std::env::var("INFERSCOPE_CAPTURE").as_deref() {
            Ok("socket") => Self::Socket,
            Ok("syscalls") => Self::Syscalls,
            Ok("auto") => Self::Auto,
            _ => self,
        }
    }
}

/// Kernel facts the socket programs need, handed to them as globals at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLayout {
    pub sk_num_off: u32,
    pub sk_protocol_off: u32,
    /// Offset of a 32-byte window of `struct pt_regs` that holds the syscall number and its
    /// second and third arguments, and their 8-byte slots in it (one kernel read per call).
    pub regs_window_off: u32,
    pub regs_slots: [u32; 3],
    pub syscall_nrs: [u32; syscall_nr::COUNT],
}

/// The smallest 8-aligned 32-byte window holding all of `offsets`, and each one's slot.
fn regs_window(offsets: [u32; 3]) -> Result<(u32, [u32; 3]), String> {
    let base = offsets.iter().min().copied().unwrap_or(0);
    let mut slots = [0; 3];
    for (slot, off) in slots.iter_mut().zip(offsets) {
        if (off - base) % 8 != 0 || off - base >= 32 {
            return Err(format!("pt_regs fields at {offsets:?} do not fit one 32-byte window"));
        }
        *slot = (off - base) / 8;
    }
    Ok((base, slots))
}

/// The raw tracepoints the socket path attaches to, as (program, tracepoint).
pub const SOCKET_HOOKS: &[(&str, &str)] = &[
    ("sock_state", "inet_sock_set_state"),
    ("sock_recv", "sock_recv_length"),
    ("sock_send", "sock_send_length"),
    ("sock_send_start", "tcp_sendmsg_locked"),
];

/// This architecture's syscall numbers, or why the socket path cannot locate buffers here.
fn syscall_numbers() -> Result<[u32; syscall_nr::COUNT], String> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut n = [0u32; syscall_nr::COUNT];
        n[syscall_nr::READ] = libc::SYS_read as u32;
        n[syscall_nr::WRITE] = libc::SYS_write as u32;
        n[syscall_nr::READV] = libc::SYS_readv as u32;
        n[syscall_nr::WRITEV] = libc::SYS_writev as u32;
        n[syscall_nr::RECVFROM] = libc::SYS_recvfrom as u32;
        n[syscall_nr::SENDTO] = libc::SYS_sendto as u32;
        n[syscall_nr::RECVMSG] = libc::SYS_recvmsg as u32;
        n[syscall_nr::SENDMSG] = libc::SYS_sendmsg as u32;
        Ok(n)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err(format!("socket capture reads syscall registers on x86_64 only (this is {})", std::env::consts::ARCH))
    }
}

/// Reads what the socket path needs from the running kernel, or says why it cannot be used.
pub fn socket_layout() -> Result<SocketLayout, String> {
    let btf = btf::Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?;
    for (_, tp) in SOCKET_HOOKS {
        if !btf.has_typedef(&format!("btf_trace_{tp}")) {
            return Err(format!("the kernel has no `{tp}` tracepoint (socket tracepoints need Linux 6.3 or later)"));
        }
    }
    let field = |st: &str, path: &[&str], size: u32| -> Result<u32, String> {
        let m = btf.member(st, path).map_err(|e| e.to_string())?;
        if m.size != size {
            return Err(format!("{st}.{} is {} bytes, expected {size}", path.join("."), m.size));
        }
        Ok(m.offset)
    };
    let (nr, a1, a2) = if cfg!(target_arch = "x86_64") { ("orig_ax", "si", "dx") } else { ("", "", "") };
    let (regs_window_off, regs_slots) =
        regs_window([field("pt_regs", &[nr], 8)?, field("pt_regs", &[a1], 8)?, field("pt_regs", &[a2], 8)?])?;
    Ok(SocketLayout {
        sk_num_off: field("sock", &["__sk_common", "skc_num"], 2)?,
        sk_protocol_off: field("sock", &["sk_protocol"], 2)?,
        regs_window_off,
        regs_slots,
        syscall_nrs: syscall_numbers()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_window() {
        // x86_64: dx 96, si 104, orig_ax 120.
        assert_eq!(regs_window([120, 104, 96]), Ok((96, [3, 1, 0])));
        assert!(regs_window([0, 8, 64]).is_err());
        assert!(regs_window([0, 4, 8]).is_err());
    }

    #[test]
    fn running_kernel_layout() {
        if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() && cfg!(target_arch = "x86_64") {
            let l = socket_layout().unwrap();
            assert_eq!((l.regs_window_off, l.regs_slots), (96, [3, 1, 0]));
        }
    }
}
