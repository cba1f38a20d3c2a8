// Churn fixture for daemon mode: a short-lived process with one probed function. Runs
// churn_work for MS milliseconds and exits. The test copies the binary to a name its rule matches.
// usage: churn-target MS
#include <stdlib.h>
#include <time.h>

__attribute__((noinline)) void churn_work(long ms) {
    struct timespec d = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&d, NULL);
    __asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv) {
    long ms = argc > 1 ? atol(argv[1]) : 50;
    // Twice: the second call is made after the agent had time to attach its probe.
    churn_work(ms / 2);
    churn_work(ms / 2);
    return 0;
}
