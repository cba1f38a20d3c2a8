//! What every program family shares: the followed processes, the data ring buffer and the
//! per-CPU loss counters. Maps are defined once, here or in the one family that uses them.

use agent_common::{counter, limits, EventHeader, DEFAULT_RING_BYTES, HEADER_LEN, MAX_CAPTURE};
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
pub static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(limits::TARGETS, 0);
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// No wakeup: userspace polls on a timer, so a busy stream costs no wakeup per record.
pub const BPF_RB_NO_WAKEUP: u64 = 1;
pub const BPF_NOEXIST: u64 = 1;

/// Per-CPU staging area for records that cannot be copied straight into the ring (buffers in
/// several pieces): header followed by payload. Twice `MAX_CAPTURE` of payload room so the
/// verifier can prove `offset (< MAX_CAPTURE) + length (<= MAX_CAPTURE)` stays inside it.
#[repr(C, align(8))]
pub struct Scratch {
    pub buf: [u8; HEADER_LEN + 2 * MAX_CAPTURE],
}
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn bump(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn is_target(tgid: u32) -> bool {
    // SAFETY: read-only lookup of a plain u32 value.
    unsafe { TARGETS.get(&tgid) }.is_some()
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

/// Copies up to `want - off` bytes from user memory at `src` into the scratch payload at `off`;
/// returns the bytes copied.
#[inline(always)]
pub fn copy_segment(scratch: &mut Scratch, off: usize, want: usize, src: u64, avail: u64) -> usize {
    if off >= want || off >= MAX_CAPTURE {
        return 0;
    }
    let mut n = want - off;
    if (avail as usize) < n {
        n = avail as usize;
    }
    if n > MAX_CAPTURE {
        n = MAX_CAPTURE;
    }
    if n == 0 {
        return 0;
    }
    let at = HEADER_LEN + (off & (MAX_CAPTURE - 1));
    // SAFETY: `at < HEADER_LEN + MAX_CAPTURE` and `n <= MAX_CAPTURE`, so the write stays inside
    // `Scratch::buf`; the helper faults safely on a bad user pointer.
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            scratch.buf.as_mut_ptr().add(at).cast(),
            n as u32,
            src as *const core::ffi::c_void,
        )
    };
    if ret < 0 {
        bump(counter::READ_FAULT);
        return 0;
    }
    n
}

/// Walks up to `MAX_IOVECS` `struct iovec`s at `iov` into the scratch payload.
#[inline(always)]
pub fn copy_iovecs(scratch: &mut Scratch, want: usize, iov: u64, iovcnt: u64) -> usize {
    let mut off = 0usize;
    let mut i = 0u32;
    while i < agent_common::MAX_IOVECS {
        if (i as u64) >= iovcnt || off >= want {
            break;
        }
        // SAFETY: user pointer read through the fault-tolerant helper.
        let seg = unsafe { aya_ebpf::helpers::bpf_probe_read_user((iov + (i as u64) * 16) as *const [u64; 2]) };
        let Ok([base, len]) = seg else {
            bump(counter::READ_FAULT);
            break;
        };
        let n = copy_segment(&mut *scratch, off, want, base, len);
        if n == 0 && len != 0 {
            break;
        }
        off += n;
        i += 1;
    }
    off
}

/// Sends the scratch area's header (written here) and `captured` payload bytes as one record.
#[inline(always)]
pub fn output_scratch(scratch: &mut Scratch, header: EventHeader, captured: usize) {
    let kind = header.kind;
    // SAFETY: the scratch slot is 8-aligned and starts with room for the header.
    unsafe { core::ptr::write(scratch.buf.as_mut_ptr().cast::<EventHeader>(), header) };
    let total = HEADER_LEN + captured;
    if total > HEADER_LEN + MAX_CAPTURE {
        return;
    }
    if EVENTS.output::<[u8]>(&scratch.buf[..total], BPF_RB_NO_WAKEUP).is_err() {
        bump(counter::lost_for_kind(kind));
    }
}

/// A record without payload (accept, close, joined, or a call whose buffer is unknown).
#[inline(always)]
pub fn output_header(header: EventHeader) {
    if EVENTS.output::<EventHeader>(&header, BPF_RB_NO_WAKEUP).is_err() {
        bump(counter::lost_for_kind(header.kind));
    }
}
