//! Discovery: which processes to follow. What /proc tells the daemon about a process (identity
//! that survives PID reuse: PID + start time; the facts rules match on; the ports it listens on),
//! and [`Discovery`], which judges a process against the rules and keeps those that may match
//! later: candidates waiting to open a rule's port, processes waiting for their pod's record, and
//! targets whose exit was seen but whose last records are still to be read.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::time::{Duration, Instant};

use super::cgroup::{self, CgroupInfo};
use super::config::{ProcessFacts, Rule};
use super::labels::Labels;
use crate::procfs::parse_tcp_table;

/// Processes that matched a rule's identity but not (yet) its ports, re-checked each second.
const MAX_CANDIDATES: usize = 1024;
/// How long such a process may take to open its port.
const CANDIDATE_PATIENCE: Duration = Duration::from_secs(600);
/// How long a process in a pod the API has not told about yet is tried again as soon as the pod
/// arrives (after that, only the reconcile pass tries it).
const POD_PATIENCE: Duration = Duration::from_secs(120);

/// A process a rule matched in full: follow it.
pub struct Match {
    pub id: ProcessId,
    /// Index of the rule that matched.
    pub rule: usize,
    pub facts: ProcessFacts,
    pub cgroup: CgroupInfo,
    /// What found it (`exec`, `scan`, `pod known`, `port opened`), for the log.
    pub why: &'static str,
}

#[derive(Default)]
pub struct Discovery {
    /// PID → (identity, rule index, first seen) of port-rule candidates.
    candidates: HashMap<u32, (ProcessId, usize, Instant)>,
    /// PID → (identity, pod UID, since) of processes in a pod the API has not told about yet,
    /// which a `pod_labels` rule might match once it does.
    awaiting_pod: HashMap<u32, (ProcessId, String, Instant)>,
    /// Targets whose exit was seen, detached after their remaining records are read.
    exited: Vec<u32>,
}

impl Discovery {
    /// Judges one process against `rules`; `why` says what brought it here.
    pub fn consider(&mut self, pid: u32, why: &'static str, rules: &[Rule], labels: &Labels) -> Option<Match> {
        let (id, mut facts) = (ProcessId::of(pid)?, facts(pid)?);
        let cg = cgroup::of_process(pid);
        let pod = labels.pod_of(&cg);
        facts.pod_labels = pod.as_ref().map(|p| p.labels.clone());
        let Some(ri) = rules.iter().position(|r| r.matches_identity(&facts)) else {
            // In a pod the API has not told about yet (a container often starts before the
            // watch event arrives): try again when it does.
            if let (None, Some(uid)) = (&pod, &cg.pod_uid) {
                let waits = labels.pods().enabled()
                    && self.awaiting_pod.len() < MAX_CANDIDATES
                    && rules.iter().any(|r| !r.pod_labels.is_empty());
                if waits {
                    self.awaiting_pod.entry(pid).or_insert((id, uid.clone(), Instant::now()));
                }
            }
            return None;
        };
        if !rules[ri].ports.is_empty() {
            facts.listening = listening_ports(pid);
            if !rules[ri].matches(&facts) {
                if self.candidates.len() < MAX_CANDIDATES {
                    self.candidates.entry(pid).or_insert((id, ri, Instant::now()));
                }
                return None;
            }
        }
        self.forget(pid);
        Some(Match { id, rule: ri, facts, cgroup: cg, why })
    }

    /// A new program in `pid` (exec): what was known about the old one means nothing now.
    pub fn forget(&mut self, pid: u32) {
        self.candidates.remove(&pid);
        self.awaiting_pod.remove(&pid);
    }

    /// `pid`'s exit was seen; it is detached after the next drain of the data rings.
    pub fn exited(&mut self, pid: u32) {
        self.exited.push(pid);
    }

    /// The targets whose exit was seen since the last call.
    pub fn take_exited(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.exited)
    }

    /// Processes whose pod the API knows now (the pod map changed): to be judged again.
    pub fn pods_arrived(&mut self, labels: &Labels) -> Vec<u32> {
        let known: Vec<u32> = self
            .awaiting_pod
            .iter()
            .filter(|(_, (_, uid, _))| labels.pods().get(uid).is_some())
            .map(|(p, _)| *p)
            .collect();
        for pid in &known {
            self.awaiting_pod.remove(pid);
        }
        known
    }

    /// Each second: candidates that opened their rule's port now match; candidates gone or past
    /// their patience, and processes that waited too long for their pod, are dropped.
    pub fn every_second(&mut self, rules: &[Rule], now: Instant) -> Vec<Match> {
        let cands: Vec<(u32, ProcessId, usize, Instant)> =
            self.candidates.iter().map(|(p, (id, ri, t))| (*p, *id, *ri, *t)).collect();
        let mut found = Vec::new();
        for (pid, id, ri, since) in cands {
            if !id.alive() || now.duration_since(since) > CANDIDATE_PATIENCE {
                self.candidates.remove(&pid);
                continue;
            }
            let mut facts = facts(pid).unwrap_or_default();
            facts.listening = listening_ports(pid);
            if rules[ri].matches(&facts) {
                self.candidates.remove(&pid);
                found.push(Match { id, rule: ri, facts, cgroup: cgroup::of_process(pid), why: "port opened" });
            }
        }
        self.awaiting_pod.retain(|_, (id, _, since)| now.duration_since(*since) < POD_PATIENCE && id.alive());
        found
    }
}

/// A worker of a followed pre-fork server, followed by its master's rule `rule` (its own command
/// line is often no rule's: `python -c "from multiprocessing.spawn import spawn_main…"`).
pub fn worker(pid: u32, rule: usize) -> Option<Match> {
    let (id, facts) = (ProcessId::of(pid)?, facts(pid)?);
    Some(Match { id, rule, facts, cgroup: cgroup::of_process(pid), why: "worker of a followed process" })
}

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
