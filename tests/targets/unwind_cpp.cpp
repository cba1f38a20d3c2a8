// Native-unwinding fixture in C++, built -O2 -fomit-frame-pointer: no frame pointers anywhere,
// so only .eh_frame unwinding gives whole stacks, and every frame's name is a demangled C++ name.
// Two threads (main, and a std::thread) each run
//   infer::Server::serve() -> infer::Server::step(long) -> one of
//     infer::Engine::prefill(long) -> mathlib::reduce(long, int) x DEPTH (libunwcpp.so) -> mathlib::spin
//     infer::Engine::decode(long)  -> plugin::Decoder::run (virtual, libunwcppplugin.so, dlopen'ed
//                                     after SIGUSR1, i.e. after the agent attached) -> mathlib::reduce ...
//     infer::Engine::sample<4>(long) (a template in the executable) -> mathlib::spin
// with different work per call. Ground truth is the fixture's own: the thread CPU time
// (CLOCK_THREAD_CPUTIME_ID) spent inside each of the three calls, summed over both threads from
// SIGUSR1 to exit and written as "prefill_ns N\ndecode_ns N\nsample_ns N\n" to TRUTH_FILE.
// Calls are never tail calls (each caller uses the result) and `noipa` keeps every function a
// real, separate frame.
// usage: unwind_cpp SECONDS PLUGIN_PATH TRUTH_FILE
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <thread>

#include <dlfcn.h>
#include <unistd.h>

namespace mathlib {
long reduce(long n, int depth);
long spin(long n);
}  // namespace mathlib

namespace plugin {
struct Decoder {
    virtual long run(long n) = 0;
    virtual ~Decoder() = default;
};
}  // namespace plugin

namespace {
long thread_cpu_ns() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}
long monotonic_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}
std::atomic<long> spent[3];
}  // namespace

namespace infer {

class Engine {
   public:
    explicit Engine(plugin::Decoder *decoder) : decoder_(decoder) {}
    __attribute__((noipa)) long prefill(long n) { return mathlib::reduce(n * 3, 6) + 1; }
    __attribute__((noipa)) long decode(long n) { return decoder_->run(n * 2) + 2; }
    template <int K>
    __attribute__((noipa)) long sample(long n) {
        return mathlib::spin(n * K / 2) + K;
    }

   private:
    plugin::Decoder *decoder_;
};

class Server {
   public:
    Server(Engine *engine, long end_ns) : engine_(engine), end_ns_(end_ns) {}

    // One call of one of the three, timed by the thread's own CPU clock (~0.3-1 ms of work per
    // call, so the clock's own cost is far below a point).
    __attribute__((noipa)) long step(long i) {
        int k = static_cast<int>(i % 10);
        int which = k < 5 ? 0 : k < 8 ? 1 : 2;
        long t0 = thread_cpu_ns(), r;
        if (which == 0)
            r = engine_->prefill(100000);
        else if (which == 1)
            r = engine_->decode(100000);
        else
            r = engine_->sample<4>(100000);
        local_[which] += thread_cpu_ns() - t0;
        return r ^ i;
    }

    __attribute__((noipa)) long serve() {
        long acc = 0;
        for (long i = 0; monotonic_ns() < end_ns_; i++) acc += step(i);
        for (int w = 0; w < 3; w++) spent[w] += local_[w];
        return acc;
    }

   private:
    Engine *engine_;
    long end_ns_;
    long local_[3] = {0, 0, 0};
};

}  // namespace infer

volatile long sink;

int main(int argc, char **argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: unwind_cpp SECONDS PLUGIN_PATH TRUTH_FILE\n");
        return 2;
    }
    double seconds = std::atof(argv[1]);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, nullptr);
    std::printf("READY %d\n", getpid());
    std::fflush(stdout);
    int sig;
    sigwait(&set, &sig);
    void *h = dlopen(argv[2], RTLD_NOW);
    auto make = h ? reinterpret_cast<plugin::Decoder *(*)()>(dlsym(h, "make_decoder")) : nullptr;
    if (!make) {
        std::fprintf(stderr, "dlopen %s: %s\n", argv[2], dlerror());
        return 1;
    }
    infer::Engine engine(make());
    long end = monotonic_ns() + static_cast<long>(seconds * 1e9);
    infer::Server main_server(&engine, end), worker_server(&engine, end);
    std::thread worker([&worker_server] { sink = worker_server.serve(); });
    long r = main_server.serve();
    worker.join();
    sink += r;
    FILE *f = std::fopen(argv[3], "w");
    if (!f) return 2;
    std::fprintf(f, "prefill_ns %ld\ndecode_ns %ld\nsample_ns %ld\n", spent[0].load(), spent[1].load(),
                 spent[2].load());
    std::fclose(f);
    return 0;
}
