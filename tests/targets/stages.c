// Stage-latency test target. Built several ways by the tests (PIE, non-PIE, stripped with
// .dynsym kept, functions in a shared library) from this file and stagefns.c.
//
// usage: stages THREADS ITERATIONS SPIN_US [DLOPEN_LIB]
// Protocol on stdin/stdout, so probes are attached before the work starts:
//   prints READY <pid>, measures an unprobed empty-call loop, waits for a line;
//   measures the empty-call loop again (now probed: the difference is the probe's own cost);
//   with DLOPEN_LIB: dlopen()s it, prints LOADED, waits for a line, calls plugin_work ITERATIONS times;
//   runs THREADS threads x ITERATIONS x (stage_outer + stage_recurse(3));
//   prints its truth as one JSON line and waits for a last line before exiting.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

extern atomic_long st_outer_calls, st_inner_calls, st_recurse_calls;
extern atomic_long st_outer_ns, st_inner_ns, st_recurse_top_ns;
long st_now_ns(void);
int stage_outer(long us);
int stage_recurse(int depth, long us);
int stage_empty(int x);

static long iterations, spin_us;
#define EMPTY_CALLS 100000

static long empty_loop_ns(void) {
    int x = 0;
    long t0 = st_now_ns();
    for (int i = 0; i < EMPTY_CALLS; i++) x = stage_empty(x);
    return (st_now_ns() - t0) / (x > 0 ? EMPTY_CALLS : 1);
}

static void *worker(void *arg) {
    (void)arg;
    for (long i = 0; i < iterations; i++) {
        stage_outer(spin_us);
        long t0 = st_now_ns();
        stage_recurse(3, spin_us / 4 + 1);
        atomic_fetch_add(&st_recurse_top_ns, st_now_ns() - t0);
    }
    return NULL;
}

static int wait_line(void) {
    char line[64];
    return fgets(line, sizeof line, stdin) != NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s THREADS ITERATIONS SPIN_US [DLOPEN_LIB]\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[1]);
    iterations = atol(argv[2]);
    spin_us = atol(argv[3]);
    printf("READY %d\n", getpid());
    fflush(stdout);
    long empty_before = empty_loop_ns();
    if (!wait_line()) return 1;
    long empty_after = empty_loop_ns();
    long plugin_calls = 0;
    if (argc > 4) {
        void *h = dlopen(argv[4], RTLD_NOW);
        if (!h) {
            fprintf(stderr, "dlopen: %s\n", dlerror());
            return 1;
        }
        printf("LOADED\n");
        fflush(stdout);
        if (!wait_line()) return 1;
        int (*work)(long) = (int (*)(long))dlsym(h, "plugin_work");
        for (long i = 0; i < iterations; i++) plugin_calls += work(spin_us);
    }
    pthread_t t[64];
    if (threads > 64) threads = 64;
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    long tops = iterations * threads;
    printf("{\"outer_calls\":%ld,\"inner_calls\":%ld,\"recurse_calls\":%ld,\"plugin_calls\":%ld,"
           "\"outer_mean_ns\":%ld,\"inner_mean_ns\":%ld,\"recurse_top_mean_ns\":%ld,"
           "\"empty_unprobed_ns\":%ld,\"empty_probed_ns\":%ld,\"empty_calls\":%d}\n",
           (long)st_outer_calls, (long)st_inner_calls, (long)st_recurse_calls, plugin_calls,
           st_outer_calls ? (long)st_outer_ns / (long)st_outer_calls : 0,
           st_inner_calls ? (long)st_inner_ns / (long)st_inner_calls : 0, tops ? (long)st_recurse_top_ns / tops : 0,
           empty_before, empty_after, EMPTY_CALLS);
    fflush(stdout);
    wait_line();
    return 0;
}
