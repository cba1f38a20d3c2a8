//! CPython frames of a sample: once the native walk (`unwind`) has ended, a process with a
//! Python layout in `PY_PROCS` has this program tail-called. It finds the sampled thread's
//! `PyThreadState` (the one whose `thread_id`, CPython's `pthread_self()`, equals the task's
//! fsbase) in the interpreter's thread list, walks its `_PyInterpreterFrame` chain from the leaf
//! and records each frame's code object and instruction pointer, marking the frames where an
//! eval-loop call began. The native stack and the Python frames are stored under one id (the
//! hash of both) and the sample is counted there.

use agent_common::{
    python::{
        frame_flag, limits, status, PyFrame, PyProc, PySample, PyStack, NO_CFRAME, NO_FIELD, PY_MAX_FRAMES,
        PY_MAX_THREADS,
    },
    SampleKey,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::{map, perf_event},
    maps::{HashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::PerfEventContext,
};

use crate::common::BPF_NOEXIST;

const BPF_RB_NO_WAKEUP: u64 = 1;

const BPF_F_NO_PREALLOC: u32 = 1;
const EEXIST: i32 = 17;

#[map]
static PY_PROCS: HashMap<u32, PyProc> = HashMap::with_max_entries(limits::PY_PROCS, BPF_F_NO_PREALLOC);
#[map]
static PY_STACKS: HashMap<u32, PyStack> = HashMap::with_max_entries(limits::PY_STACKS, BPF_F_NO_PREALLOC);
#[map]
static PY_STATE: PerCpuArray<PyStack> = PerCpuArray::with_max_entries(1, 0);
/// Slot 0: `cpu_python` (set by userspace after loading).
#[map]
static PY_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// Per-CPU counters, see `agent_common::python::counter`.
#[map]
static PY_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(agent_common::python::counter::COUNT, 0);
/// Each sample with its time and thread, while sampled Python stages run (`setting::PY_SAMPLES`).
#[map]
static PY_SAMPLES: RingBuf = RingBuf::with_byte_size(limits::PY_SAMPLES_BYTES, 0);

/// Hands the finished native walk to `cpu_python` when `tgid` runs Python; returns only when
/// it does not (not Python, program not loaded, out of tail calls).
#[inline(always)]
pub fn hand_over(ctx: &PerfEventContext, tgid: u32) {
    if PY_PROCS.get_ptr(&tgid).is_some() {
        // SAFETY: on success control never comes back here.
        unsafe { PY_PROGS.tail_call(ctx, 0) };
    }
}

#[perf_event]
pub fn cpu_python(_ctx: PerfEventContext) -> u32 {
    let Some(st) = crate::unwind::state() else { return 0 };
    let Some(py) = PY_STATE.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's slot; nothing else runs on this CPU while we do.
    let py = unsafe { &mut *py };
    py.len = 0;
    let key = st.key;
    // SAFETY: read-only use of a map value userspace replaces whole.
    py.status = match unsafe { PY_PROCS.get(&key.tgid) } {
        Some(p) => walk(p, py),
        None => status::NO_THREAD,
    };
    bump(agent_common::python::counter::WALKS);
    if py.status != status::OK && py.status != status::TRUNCATED {
        bump(agent_common::python::counter::FAILED);
    }
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ py.status as u64;
    let len = py.len as usize;
    let mut i = 0;
    while i < PY_MAX_FRAMES {
        if i >= len {
            break;
        }
        let f = &py.frames[i];
        seed ^= f.code ^ ((f.instr as u64) << 32) ^ f.flags as u64;
        seed = seed.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    let id = crate::unwind::store_stack(st, seed);
    if id >= 0 {
        match PY_STACKS.insert(&(id as u32), py, BPF_NOEXIST) {
            Ok(()) => {}
            Err(e) if e == -EEXIST => {}
            Err(_) => bump(agent_common::python::counter::STACKS_FULL),
        }
    }
    crate::sampling::count_sample(&SampleKey { user_stack: id, ..key });
    if crate::lifecycle::enabled(agent_common::setting::PY_SAMPLES) {
        let ev = PySample {
            // SAFETY: plain helper calls.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            tgid: key.tgid,
            tid: bpf_get_current_pid_tgid() as u32,
            stack: id,
            _pad: 0,
        };
        if PY_SAMPLES.output::<PySample>(&ev, BPF_RB_NO_WAKEUP).is_err() {
            bump(agent_common::python::counter::SAMPLES_LOST);
        }
    }
    0
}

#[inline(always)]
fn bump(idx: u32) {
    if let Some(p) = PY_COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn read_user(addr: u64) -> Option<u64> {
    // SAFETY: fault-tolerant read of the sampled task's memory.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
fn read_user_u8(addr: u64) -> Option<u8> {
    // SAFETY: as above.
    unsafe { bpf_probe_read_user(addr as *const u8) }.ok()
}

/// The sampled thread's Python frames into `py`; returns a [`status`].
#[inline(always)]
fn walk(p: &PyProc, py: &mut PyStack) -> u32 {
    // SAFETY: the current task, read fault-tolerantly at an offset from the kernel's BTF.
    let task = unsafe { bpf_get_current_task() };
    let Ok(fsbase) = (unsafe { bpf_probe_read_kernel((task + p.task_fsbase as u64) as *const u64) }) else {
        return status::READ_FAULT;
    };
    let Some(interp) = read_user(p.interp_head_addr) else { return status::READ_FAULT };
    let Some(mut ts) = read_user(interp.wrapping_add(p.interp_threads_head as u64)) else {
        return status::READ_FAULT;
    };
    let mut found = 0u64;
    let mut i = 0;
    while i < PY_MAX_THREADS {
        if ts == 0 {
            break;
        }
        let Some(id) = read_user(ts.wrapping_add(p.tstate_thread_id as u64)) else { return status::READ_FAULT };
        if id == fsbase {
            found = ts;
            break;
        }
        let Some(next) = read_user(ts.wrapping_add(p.tstate_next as u64)) else { return status::READ_FAULT };
        ts = next;
        i += 1;
    }
    if found == 0 {
        return status::NO_THREAD;
    }
    let Some(mut frame) = read_user(found.wrapping_add(p.tstate_frame as u64)) else { return status::READ_FAULT };
    if p.cframe_current_frame != NO_CFRAME {
        if frame == 0 {
            return status::OK;
        }
        let Some(f) = read_user(frame.wrapping_add(p.cframe_current_frame as u64)) else {
            return status::READ_FAULT;
        };
        frame = f;
    }
    // Shim frames take steps but no slots: twice the slots bounds the walk.
    let mut step = 0;
    while step < 2 * PY_MAX_FRAMES {
        if frame == 0 {
            return status::OK;
        }
        let len = py.len as usize;
        let Some(owner) = read_user_u8(frame.wrapping_add(p.frame_owner as u64)) else { return status::READ_FAULT };
        if p.owner_cstack != NO_FIELD && owner as u32 == p.owner_cstack {
            // The frame a `_PyEval_EvalFrameDefault` call pushed on entry: the one recorded
            // before it is the outermost of that call.
            if len > 0 {
                py.frames[(len - 1) & (PY_MAX_FRAMES - 1)].flags |= frame_flag::ENTRY;
            }
        } else {
            if len >= PY_MAX_FRAMES {
                return status::TRUNCATED;
            }
            let Some(code) = read_user(frame.wrapping_add(p.frame_code as u64)) else { return status::READ_FAULT };
            let instr = read_user(frame.wrapping_add(p.frame_instr as u64)).unwrap_or(0);
            let mut flags = 0;
            if p.frame_is_entry != NO_FIELD
                && read_user_u8(frame.wrapping_add(p.frame_is_entry as u64)).unwrap_or(0) != 0
            {
                flags = frame_flag::ENTRY;
            }
            py.frames[len & (PY_MAX_FRAMES - 1)] = PyFrame { code, instr: instr.wrapping_sub(code) as u32, flags };
            py.len = len as u32 + 1;
        }
        let Some(prev) = read_user(frame.wrapping_add(p.frame_previous as u64)) else { return status::READ_FAULT };
        frame = prev;
        step += 1;
    }
    status::TRUNCATED
}
