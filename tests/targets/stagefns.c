// Functions with known cost for the stage-latency tests. Each records its own truth: calls and
// in-body duration (CLOCK_MONOTONIC), so the agent's numbers can be checked against it.
#include <stdatomic.h>
#include <time.h>

atomic_long st_outer_calls, st_inner_calls, st_recurse_calls, st_empty_calls;
atomic_long st_outer_ns, st_inner_ns, st_recurse_top_ns;

long st_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

__attribute__((noinline)) void spin_for_us(long us) {
    long end = st_now_ns() + us * 1000;
    while (st_now_ns() < end) {
    }
}

__attribute__((noinline)) int stage_inner(long us) {
    long t0 = st_now_ns();
    spin_for_us(us);
    atomic_fetch_add(&st_inner_ns, st_now_ns() - t0);
    atomic_fetch_add(&st_inner_calls, 1);
    return 1;
}

// outer = its own spin + two inner calls: self time one spin, total three.
__attribute__((noinline)) int stage_outer(long us) {
    long t0 = st_now_ns();
    spin_for_us(us);
    int r = stage_inner(us) + stage_inner(us);
    atomic_fetch_add(&st_outer_ns, st_now_ns() - t0);
    atomic_fetch_add(&st_outer_calls, 1);
    return r;
}

// Real recursion: without optimisation GCC keeps every call (at -O2 it turns this into a loop).
__attribute__((noinline, optimize("O0"))) int stage_recurse(int depth, long us) {
    atomic_fetch_add(&st_recurse_calls, 1);
    spin_for_us(us);
    return depth > 0 ? stage_recurse(depth - 1, us) + 1 : 0;
}

// Nothing inside: its probed cost is the probe's own cost.
__attribute__((noinline)) int stage_empty(int x) {
    __asm__ volatile("" ::: "memory");
    return x + 1;
}
