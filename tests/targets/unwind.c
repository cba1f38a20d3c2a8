// Native-unwinding fixture, built -O2 -fomit-frame-pointer: no frame pointers anywhere, so only
// .eh_frame unwinding gives whole stacks. Two threads (main, and `worker` from pthread_create)
// each run main/worker -> serve -> dispatch -> {alpha 70 %, beta 30 % of the calls} with equal
// work per call; alpha -> shared_leaf (libunwshared.so) -> shared_recurse x DEPTH -> spin;
// beta -> plugin_beta (libunwplugin.so, dlopen'ed after SIGUSR1, i.e. after the agent attached)
// -> shared_leaf -> ... Calls are never tail calls (each caller uses the result), so every frame
// stays on the stack (`noipa`: no inlining, cloning or constant propagation). usage: unwind SECONDS PLUGIN_PATH
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

long shared_leaf(long n);
static long (*plugin_beta)(long);
static double seconds;
volatile long sink;

__attribute__((noipa)) long alpha(long n) { return shared_leaf(n) + 1; }

__attribute__((noipa)) long beta(long n) { return plugin_beta(n) + 2; }

__attribute__((noipa)) long dispatch(long i) {
    long r = (i % 10 < 7) ? alpha(20000) : beta(20000);
    return r ^ i;
}

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

__attribute__((noipa)) long serve(void) {
    long end = now_ns() + (long)(seconds * 1e9), acc = 0;
    // The clock is read once per 1000 calls (~ms): samples land in the call chain, not in it.
    for (long i = 0; now_ns() < end; i++)
        for (long j = 0; j < 1000; j++) acc += dispatch(j);
    return acc;
}

__attribute__((noipa)) void *worker(void *arg) {
    sink = serve();
    return arg;
}

int main(int argc, char **argv) {
    seconds = argc > 1 ? atof(argv[1]) : 3;
    const char *plugin = argc > 2 ? argv[2] : "./libunwplugin.so";
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    printf("READY %d\n", getpid());
    fflush(stdout);
    int sig;
    sigwait(&set, &sig);
    void *h = dlopen(plugin, RTLD_NOW);
    if (!h || !(plugin_beta = (long (*)(long))dlsym(h, "plugin_beta"))) {
        fprintf(stderr, "dlopen %s: %s\n", plugin, dlerror());
        return 1;
    }
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    long r = serve();
    pthread_join(t, NULL);
    sink += r;
    return 0;
}
