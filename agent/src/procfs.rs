//! What /proc tells about a target: identity, and the inbound connections it already holds when
//! we attach (so keep-alive connections opened before attach are followed too).

use std::collections::HashSet;
use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::report::TargetInfo;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("no such process: {0} (is the PID right, and is it in this PID namespace?)")]
    NoSuchProcess(u32),
    #[error("cannot read /proc/{pid}: {source}")]
    Io { pid: u32, source: std::io::Error },
}

pub fn target_info(pid: u32) -> Result<TargetInfo, ProcError> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ProcError::NoSuchProcess(pid),
        _ => ProcError::Io { pid, source: e },
    })?;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_default();
    Ok(TargetInfo { pid, comm: comm.trim().to_string(), exe })
}

/// A pidfd for `pid`: becomes readable when the process exits (never confused by PID reuse).
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// File descriptors of established TCP connections that arrived on one of the process's
/// listening ports (the server side of inbound connections).
pub fn inbound_connection_fds(pid: u32) -> Vec<i32> {
    let mut listening = HashSet::new();
    let mut established = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        for row in parse_tcp_table(&text) {
            match row.state {
                0x0A => {
                    listening.insert(row.local_port);
                }
                0x01 => established.push(row),
                _ => {}
            }
        }
    }
    let inodes: HashSet<u64> =
        established.iter().filter(|r| listening.contains(&r.local_port)).map(|r| r.inode).collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let mut fds = Vec::new();
    for entry in dir.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(link) = fs::read_link(entry.path()) else { continue };
        if let Some(inode) = socket_inode(&link.to_string_lossy()) {
            if inodes.contains(&inode) {
                fds.push(fd);
            }
        }
    }
    fds.sort_unstable();
    fds
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRow {
    pub local_port: u16,
    pub state: u8,
    pub inode: u64,
}

/// Parses /proc/net/tcp{,6}: `sl local_address rem_address st ... inode ...`.
pub fn parse_tcp_table(text: &str) -> Vec<TcpRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1)?;
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            let state = u8::from_str_radix(cols.get(3)?, 16).ok()?;
            let inode = cols.get(9)?.parse().ok()?;
            Some(TcpRow { local_port: port, state, inode })
        })
        .collect()
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_table_rows() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(
            parse_tcp_table(text),
            vec![
                TcpRow { local_port: 8080, state: 0x0A, inode: 12345 },
                TcpRow { local_port: 8080, state: 0x01, inode: 12346 }
            ]
        );
        assert_eq!(socket_inode("socket:[12346]"), Some(12346));
        assert_eq!(socket_inode("pipe:[1]"), None);
    }

    #[test]
    fn missing_process_is_a_clear_error() {
        let err = target_info(u32::MAX - 1).unwrap_err();
        assert!(err.to_string().starts_with("no such process"));
    }
}
