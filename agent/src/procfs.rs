//! What /proc tells about a target: identity, and the inbound connections it already holds when
//! we attach (so keep-alive connections opened before attach are followed too).

use std::collections::HashSet;
use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};

/// What we know about the target process. No command line: it may hold credentials.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TargetInfo {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    /// Workers followed with it (pre-fork servers: they accept what its socket receives).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<u32>,
    /// Programs the target exec'd during the run (same PID, new image), in order; `comm`/`exe`
    /// above are the program it ran at the end.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub execs: Vec<ExecInfo>,
}

/// One `execve` of the target during a run: a new identity from `at_s` on.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct ExecInfo {
    /// Seconds since the run started.
    pub at_s: f64,
    /// The program it ran before and the one it runs since.
    pub from_comm: String,
    pub comm: String,
    pub exe: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("no such process: {0} (is the PID right, and is it in this PID namespace?)")]
    NoSuchProcess(u32),
    #[error("cannot attach to pid {pid}: {why}")]
    NotAttachable { pid: u32, why: &'static str },
    #[error("cannot read /proc/{pid}: {source}")]
    Io { pid: u32, source: std::io::Error },
}

pub fn target_info(pid: u32) -> Result<TargetInfo, ProcError> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ProcError::NoSuchProcess(pid),
        _ => ProcError::Io { pid, source: e },
    })?;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_default();
    Ok(TargetInfo { pid, comm: comm.trim().to_string(), exe, workers: Vec::new(), execs: Vec::new() })
}

/// Refuses, with one line, a PID that cannot be measured: this agent itself, a kernel thread
/// (no user space, no sockets of its own), a zombie (already exited).
pub fn check_attachable(pid: u32) -> Result<(), ProcError> {
    if pid == std::process::id() {
        return Err(ProcError::NotAttachable { pid, why: "that is inferscope itself" });
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ProcError::NoSuchProcess(pid),
        _ => ProcError::Io { pid, source: e },
    })?;
    // Fields after the parenthesised comm: state is the first, flags the seventh.
    let rest: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    if rest.first() == Some(&"Z") {
        return Err(ProcError::NotAttachable { pid, why: "it is a zombie (exited, not yet reaped)" });
    }
    const PF_KTHREAD: u64 = 0x0020_0000;
    if rest.get(6).and_then(|f| f.parse::<u64>().ok()).is_some_and(|f| f & PF_KTHREAD != 0) {
        return Err(ProcError::NotAttachable { pid, why: "it is a kernel thread" });
    }
    Ok(())
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

/// The process's TCP sockets as /proc tells: rows of its network namespace's tables, and the
/// socket inodes of its own file descriptors (fd → inode).
fn tcp_sockets(pid: u32) -> (Vec<TcpRow>, Vec<(i32, u64)>) {
    let mut rows = Vec::new();
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            rows.extend(parse_tcp_table(&text));
        }
    }
    let mut fds = Vec::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(link) = fs::read_link(entry.path()) else { continue };
            if let Some(inode) = socket_inode(&link.to_string_lossy()) {
                fds.push((fd, inode));
            }
        }
    }
    (rows, fds)
}

/// Ports the process listens on with sockets it holds itself (not its neighbours' in the same
/// network namespace).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let (rows, fds) = tcp_sockets(pid);
    let mine: HashSet<u64> = fds.iter().map(|&(_, inode)| inode).collect();
    let mut ports: Vec<u16> =
        rows.iter().filter(|r| r.state == 0x0A && mine.contains(&r.inode)).map(|r| r.local_port).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Processes below `pid` (children, grandchildren…) that hold one of the TCP sockets `pid`
/// listens on: the workers of a pre-fork server (uvicorn/gunicorn `--workers`, multiprocessing),
/// which accept the connections their master's socket receives.
pub fn workers_of(pid: u32) -> Vec<u32> {
    workers_in(pid, &children())
}

/// Parent → children of every process, from one pass over /proc (for [`workers_in`]).
pub fn children() -> std::collections::HashMap<u32, Vec<u32>> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(child);
        }
    }
    children
}

/// [`workers_of`] with the process tree read once for many calls.
pub fn workers_in(pid: u32, children: &std::collections::HashMap<u32, Vec<u32>>) -> Vec<u32> {
    let mut todo = children.get(&pid).cloned().unwrap_or_default();
    if todo.is_empty() {
        return Vec::new();
    }
    let (rows, fds) = tcp_sockets(pid);
    let mine: HashSet<u64> = fds.iter().map(|&(_, inode)| inode).collect();
    let listening: HashSet<u64> =
        rows.iter().filter(|r| r.state == 0x0A && mine.contains(&r.inode)).map(|r| r.inode).collect();
    if listening.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut seen = 0usize;
    while let Some(p) = todo.pop() {
        seen += 1;
        if out.len() >= 1024 || seen > 4096 {
            break; // bounded: a fork bomb is not a server
        }
        todo.extend(children.get(&p).into_iter().flatten().copied());
        let (_, theirs) = tcp_sockets(p);
        if theirs.iter().any(|(_, inode)| listening.contains(inode)) {
            out.push(p);
        }
    }
    out.sort_unstable();
    out
}

/// File descriptors of established TCP connections that arrived on one of the process's
/// listening ports (the server side of inbound connections).
pub fn inbound_connection_fds(pid: u32) -> Vec<i32> {
    let (rows, fds) = tcp_sockets(pid);
    let listening: HashSet<u16> = rows.iter().filter(|r| r.state == 0x0A).map(|r| r.local_port).collect();
    let inodes: HashSet<u64> =
        rows.iter().filter(|r| r.state == 0x01 && listening.contains(&r.local_port)).map(|r| r.inode).collect();
    let mut out: Vec<i32> = fds.into_iter().filter(|(_, inode)| inodes.contains(inode)).map(|(fd, _)| fd).collect();
    out.sort_unstable();
    out
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
    fn self_kernel_threads_and_zombies_are_refused() {
        let me = check_attachable(std::process::id()).unwrap_err().to_string();
        assert!(me.contains("inferscope itself"), "{me}");
        // kthreadd is PID 2 in the initial PID namespace.
        if std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
            assert!(check_attachable(2).unwrap_err().to_string().contains("kernel thread"));
        }
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(200)); // exited, not reaped: a zombie
        assert!(check_attachable(pid).unwrap_err().to_string().contains("zombie"));
        drop(child);
    }

    #[test]
    fn missing_process_is_a_clear_error() {
        let err = target_info(u32::MAX - 1).unwrap_err();
        assert!(err.to_string().starts_with("no such process"));
    }
}
