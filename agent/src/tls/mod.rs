//! TLS: plaintext from OpenSSL's `SSL_read`/`SSL_write` family instead of socket bytes.
//!
//! - [`resolve`]: which mapped files of a process export the functions (libssl.so.3/.1.1, a
//!   binary that links OpenSSL statically with its symbols, such as Node), rescanned for
//!   libraries loaded later (Python's `ssl` module loads libssl when it is imported).
//! - [`gate`]: per connection, in the tracker: once a connection is known encrypted (its first
//!   bytes are a TLS record, or plaintext arrived for it) its socket bytes never reach the
//!   HTTP parser; connections seen encrypted that never yield plaintext are counted.
//! - [`TlsFollow`]: the probes attached for the followed processes of one run.
//!
//! Not followed: TLS stacks without exported OpenSSL symbols (Go's crypto/tls, rustls or
//! BoringSSL linked statically and stripped, GnuTLS, NSS) — their connections are counted as
//! encrypted but not decoded.

pub mod gate;
pub mod resolve;

use std::collections::{HashMap, HashSet};

use crate::bpf::{SocketProbes, StageLink};
use crate::capture::CaptureMode;

/// Files probed once for every process (the daemon) at most; more are logged and skipped.
pub const MAX_SHARED_FILES: usize = 64;

/// TLS probes of the processes one run follows.
#[derive(Default)]
pub struct TlsFollow {
    resolvers: HashMap<u32, resolve::TlsResolver>,
    links: HashMap<u32, Vec<StageLink>>,
    /// Daemon: one set of probes per file for every process that maps it (the kernel's target
    /// check filters), kept until the agent exits: creating a uprobe costs the kernel tens of
    /// milliseconds here, so a churn of processes must not create a set each. Attach: per process.
    shared: bool,
    /// Shared mode: files already handled (probed, or refused), never opened again.
    shared_files: HashSet<resolve::FileKey>,
    shared_links: Vec<StageLink>,
    /// Files probed, as the target sees them (for the capture line and the report).
    pub probed: Vec<String>,
    /// Files that export the functions but could not be probed (Go binaries), or failed.
    pub refused: Vec<String>,
}

impl TlsFollow {
    /// The daemon's kind: probes shared per file by every followed process.
    pub fn shared() -> Self {
        Self { shared: true, ..Self::default() }
    }

    /// Searches `pid`'s mapped files not searched before and probes the TLS functions found.
    /// Only on the socket capture path (the syscall fallback does not suppress ciphertext).
    pub fn scan(&mut self, probes: &mut SocketProbes, pid: u32) {
        if probes.mode != CaptureMode::Socket {
            return;
        }
        let resolver = self.resolvers.entry(pid).or_insert_with(|| resolve::TlsResolver::new(pid));
        let found = resolver.scan(&self.shared_files);
        if self.shared && self.shared_files.len() < 4 * MAX_SHARED_FILES {
            // Files without the functions (the interpreter itself) are not opened again either.
            let without: Vec<_> =
                resolver.opened.iter().filter(|k| !found.iter().any(|t| t.file == **k)).copied().collect();
            self.shared_files.extend(without);
        }
        for t in found {
            let name = t.module.display().to_string();
            if self.shared {
                if self.shared_files.len() >= MAX_SHARED_FILES {
                    log::warn!("TLS: {name} not probed: {MAX_SHARED_FILES} files are probed already");
                    continue;
                }
                self.shared_files.insert(t.file);
            }
            if t.go {
                log::warn!(
                    "TLS: {name} is a Go binary: return probes would corrupt its stacks, its TLS is not followed"
                );
                self.refused.push(name);
                continue;
            }
            let scope = if self.shared { 0 } else { pid };
            match probes.attach_tls(&t.open_path, &t.calls, t.free, scope) {
                Ok(links) => {
                    log::info!("TLS: probing {} function(s) in {name} (pid {pid})", t.calls.len());
                    if self.shared {
                        self.shared_links.extend(links);
                    } else {
                        self.links.entry(pid).or_default().extend(links);
                    }
                    if !self.probed.contains(&name) {
                        self.probed.push(name);
                    }
                }
                Err(e) => {
                    log::warn!("TLS: cannot probe {name}: {e}");
                    self.refused.push(name);
                }
            }
        }
    }

    /// Detaches `pid`'s probes (it is gone or no longer followed).
    pub fn forget(&mut self, probes: &mut SocketProbes, pid: u32) {
        self.resolvers.remove(&pid);
        if let Some(links) = self.links.remove(&pid) {
            probes.detach_stages(links);
        }
    }

    /// One phrase for the capture line.
    pub fn describe(&self, mode: CaptureMode) -> String {
        if mode != CaptureMode::Socket {
            return "TLS: not followed on the syscall fallback".into();
        }
        if self.probed.is_empty() {
            "TLS: no libssl mapped yet (probed when one is loaded)".into()
        } else {
            let names: Vec<&str> = self.probed.iter().map(|p| p.rsplit('/').next().unwrap_or(p.as_str())).collect();
            format!("TLS: libssl probes in {}", names.join(", "))
        }
    }
}
