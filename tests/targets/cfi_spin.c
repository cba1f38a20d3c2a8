// CPU-bound target for the native-unwinding overhead benchmark (issue 13), built
// -O2 -fomit-frame-pointer: a loop 18 frames deep (main -> work -> level x 15 -> leaf), no
// syscalls while it spins. On each SIGUSR1 it appends `iterations thread_cpu_ns monotonic_ns`
// to MARKS_FILE (written from the loop, not the handler).
// usage: cfi_spin MARKS_FILE   (prints `READY <pid>`)
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t want_mark;
static void on_usr1(int sig) { (void)sig; want_mark = 1; }

static long clock_ns(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

__attribute__((noipa)) long leaf(long n) {
    long acc = 0;
    for (long i = 0; i < n; i++) {
        acc = acc * 6364136223846793005L + i;
        __asm__ volatile("" : "+r"(acc));
    }
    return acc;
}

__attribute__((noipa)) long level(int depth, long n) {
    if (depth == 0) return leaf(n) + 1;
    return level(depth - 1, n) * 3 + depth;
}

__attribute__((noipa)) long work(long n) { return level(14, n) ^ n; }

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: cfi_spin MARKS_FILE\n");
        return 2;
    }
    signal(SIGUSR1, on_usr1);
    printf("READY %d\n", getpid());
    fflush(stdout);
    volatile long sink = 0;
    for (long count = 0;; count++) {
        sink += work(2000);
        if (want_mark) {
            want_mark = 0;
            FILE *f = fopen(argv[1], "a");
            if (!f) return 2;
            fprintf(f, "%ld %ld %ld\n", count, clock_ns(CLOCK_THREAD_CPUTIME_ID), clock_ns(CLOCK_MONOTONIC));
            fclose(f);
        }
    }
}
