//! inferscope's eBPF programs, one module per family:
//!
//! | module | hooks | job |
//! |---|---|---|
//! | `socket` | raw tracepoints `sock_recv_length`, `sock_send_length`, `inet_sock_set_state` | stream capture (default) |
//! | `syscalls` | `syscalls:sys_{enter,exit}_*` | stream capture fallback (kernels < 6.3 or without BTF) |
//! | `stages` | uprobes / uretprobes | stage latency |
//! | `tls` | uprobes / uretprobes on OpenSSL's `SSL_read`/`SSL_write` family, `SSL_free` | TLS plaintext |
//! | `lifecycle` | `sched_process_exit`, `sched_process_exec` | per-thread cleanup, daemon discovery |
//! | `sampling` | perf cpu-clock, `sched_switch` | CPU and off-CPU profiles |
//! | `unwind` | `cpu_unwind` (tail-called by `cpu_sample`) | user stacks from `.eh_frame` tables |
//! | `offcpu` | `offcpu_unwind` (tail-called by `offcpu_switch`) | off-CPU user stacks from `.eh_frame` tables |
//! | `python` | `cpu_python` (tail-called by `cpu_unwind`) | CPython frames of a sample |
//!
//! `common` holds what they share (followed processes, the data ring, loss counters). The
//! record layouts are in `agent-common`, the wire format both sides compile from.
#![no_std]
#![no_main]
// Atomic adds on map values (the BPF target has no atomic types); built with nightly anyway.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod common;
mod lifecycle;
mod offcpu;
mod python;
mod sampling;
mod socket;
mod stages;
mod syscalls;
mod tls;
mod unwind;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF has no unwinding; every panic path must be proven dead for the verifier anyway.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
