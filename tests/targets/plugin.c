// A library the stages target dlopen()s after the agent attached.
#include <time.h>
__attribute__((noinline)) int plugin_work(long us) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long end = ts.tv_sec * 1000000000L + ts.tv_nsec + us * 1000;
    do { clock_gettime(CLOCK_MONOTONIC, &ts); } while (ts.tv_sec * 1000000000L + ts.tv_nsec < end);
    return 1;
}
