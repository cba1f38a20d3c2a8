// Off-CPU fixture: a thread that blocks in two named functions in a known ratio. Each cycle it
// sleeps A_MS in block_a (nanosleep) and reads from a pipe that a helper thread fills after
// B_MS in block_b. It cycles uncounted until SIGUSR1 (sent once the profiler is attached), then
// for SECONDS records its own ground truth: the wall time spent inside each function, written as
// "block_a_ns N\nblock_b_ns N\n" to TRUTH_FILE before it exits.
// usage: block SECONDS A_MS B_MS TRUTH_FILE
// build: cc -O2 -g -fno-omit-frame-pointer -fno-optimize-sibling-calls -pthread; also built with
// -fomit-frame-pointer, where only .eh_frame unwinding finds the callers of the blocking calls.
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static volatile sig_atomic_t go;
static void on_usr1(int sig) { (void)sig; go = 1; }

static int pipefd[2];
static long b_ms;

// The helper writes one byte B_MS after each request byte arrives on the request pipe.
static int reqfd[2];
static void *helper(void *arg) {
    (void)arg;
    char c;
    while (read(reqfd[0], &c, 1) == 1) {
        struct timespec d = {0, b_ms * 1000000L};
        nanosleep(&d, NULL);
        if (write(pipefd[1], &c, 1) != 1) break;
    }
    return NULL;
}

// Frame-pointer unwinding from a syscall skips the libc wrapper's caller, so each blocking call
// sits one noinline level below the function the test looks for.
__attribute__((noinline)) static void nap(long ms) {
    struct timespec d = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&d, NULL);
}

__attribute__((noinline)) static void wait_pipe(void) {
    char c = 'x';
    if (write(reqfd[1], &c, 1) != 1 || read(pipefd[0], &c, 1) != 1) exit(2);
}

// The barriers after the calls keep them real calls (no tail-call jump that would drop the frame).
__attribute__((noinline)) void block_a(long ms) {
    nap(ms);
    __asm__ volatile("" ::: "memory");
}
__attribute__((noinline)) void block_b(void) {
    wait_pipe();
    __asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: block SECONDS A_MS B_MS TRUTH_FILE\n");
        return 2;
    }
    double seconds = atof(argv[1]);
    long a_ms = atol(argv[2]);
    b_ms = atol(argv[3]);
    if (pipe(pipefd) || pipe(reqfd)) return 2;
    signal(SIGUSR1, on_usr1);
    pthread_t t;
    pthread_create(&t, NULL, helper, NULL);
    printf("READY %d\n", getpid());
    fflush(stdout);
    while (!go) {
        block_a(a_ms);
        block_b();
    }
    long in_a = 0, in_b = 0, end = now_ns() + (long)(seconds * 1e9);
    while (now_ns() < end) {
        long t0 = now_ns();
        block_a(a_ms);
        long t1 = now_ns();
        block_b();
        long t2 = now_ns();
        in_a += t1 - t0;
        in_b += t2 - t1;
    }
    FILE *f = fopen(argv[4], "w");
    if (!f) return 2;
    fprintf(f, "block_a_ns %ld\nblock_b_ns %ld\n", in_a, in_b);
    fclose(f);
    return 0;
}
