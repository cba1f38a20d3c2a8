// CPU profile fixture: burns CPU in two named functions in a known ratio (A_PERCENT of each
// 1 ms CPU-time slice in burn_a, the rest in burn_b) for SECONDS. Build with -fno-omit-frame-pointer.
// usage: burn SECONDS A_PERCENT
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

// The split is by this thread's CPU time, which is what CPU sampling measures: a wall-clock
// split would shift whenever the scheduler preempts the fixture mid-slice.
static long cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

volatile unsigned long sink;

// The time goes into the function's own arithmetic; the clock is read once per 20k steps so
// samples land in burn_a/burn_b themselves, not in libc (whose frames lack frame pointers).
__attribute__((noinline)) void burn_a(long ns) {
    long end = cpu_ns() + ns;
    while (cpu_ns() < end)
        for (int i = 0; i < 20000; i++) sink = sink * 31 + 3;
}

__attribute__((noinline)) void burn_b(long ns) {
    long end = cpu_ns() + ns;
    while (cpu_ns() < end)
        for (int i = 0; i < 20000; i++) sink = sink * 37 + 5;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 3;
    long a_percent = argc > 2 ? atol(argv[2]) : 70;
    printf("READY %d\n", getpid());
    fflush(stdout);
    long end = now_ns() + (long)(seconds * 1e9);
    // 1 ms cycle: far shorter than the 99 Hz sampling period, so samples do not alias with it.
    const long slice = 1000000;
    while (now_ns() < end) {
        burn_a(slice * a_percent / 100);
        burn_b(slice * (100 - a_percent) / 100);
    }
    return 0;
}
