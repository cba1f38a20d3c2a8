// libunwshared.so for the unwinding fixture (unwind.c): a recursion (never a tail call) down
// to the arithmetic that burns the CPU. `noipa`: no constant propagation folds the recursion.
volatile unsigned long unw_sink;

__attribute__((noipa)) static long spin(long n) {
    unsigned long x = unw_sink;
    for (long i = 0; i < n; i++) x = x * 31 + 7;
    unw_sink = x;
    return (long)(x & 1);
}

__attribute__((noipa)) static long shared_recurse(int depth, long n) {
    if (depth == 0) return spin(n);
    long r = shared_recurse(depth - 1, n);
    // A volatile access after the call: gcc cannot turn the recursion into a loop.
    return r + (long)(unw_sink & (unsigned long)depth);
}

__attribute__((noipa)) long shared_leaf(long n) { return shared_recurse(4, n) * 3; }
