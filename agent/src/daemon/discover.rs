//! What /proc tells the daemon about a process: identity that survives PID reuse (PID + start
//! time), the facts rules match on, and the ports it listens on.

use std::collections::HashSet;
use std::fs;

use super::config::ProcessFacts;
use crate::procfs::parse_tcp_table;

/// A process, not just a PID: the kernel reuses PIDs, never (PID, start time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessId {
    pub pid: u32,
    /// Clock ticks after boot (field 22 of /proc/PID/stat).
    pub start_ticks: u64,
}

impl ProcessId {
    pub fn of(pid: u32) -> Option<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(Self { pid, start_ticks: start_ticks(&stat)? })
    }

    /// Still the same process?
    pub fn alive(&self) -> bool {
        Self::of(self.pid) == Some(*self)
    }
}

/// Field 22 of a stat line; the command name (field 2) may contain spaces and parentheses, so
/// fields are counted after its last `)`.
pub fn start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Every PID with a /proc entry (processes only: thread ids are not listed there).
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// comm, exe and command line (no ports: those need a socket walk, done only when a rule asks).
pub fn facts(pid: u32) -> Option<ProcessFacts> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim_end().to_string();
    let exe = fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_default();
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline =
        raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(String::from_utf8_lossy).collect::<Vec<_>>().join(" ");
    Some(ProcessFacts { comm, exe, cmdline, listening: Vec::new(), pod_labels: None })
}

/// TCP ports `pid` itself listens on (its own listening sockets, not its network namespace's).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let inodes: HashSet<u64> = dir
        .filter_map(|e| {
            let link = fs::read_link(e.ok()?.path()).ok()?;
            let s = link.to_str()?;
            s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut ports: Vec<u16> = ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|text| parse_tcp_table(&text))
        .filter(|r| r.state == 0x0A && inodes.contains(&r.inode))
        .map(|r| r.local_port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat =
            "4242 (a b) c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 1000 100 18446744073709551615";
        assert_eq!(start_ticks(stat), Some(987654));
        assert_eq!(start_ticks("garbage"), None);
    }

    #[test]
    fn our_own_process() {
        let me = std::process::id();
        let id = ProcessId::of(me).unwrap();
        assert!(id.alive());
        assert!(!ProcessId { pid: me, start_ticks: id.start_ticks + 1 }.alive(), "a reused PID is another process");
        let f = facts(me).unwrap();
        assert!(!f.comm.is_empty() && !f.cmdline.is_empty());
        assert!(all_pids().contains(&me));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening_ports(me).contains(&port));
    }
}
