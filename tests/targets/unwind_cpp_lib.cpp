// libunwcpp.so for the C++ unwinding fixture (unwind_cpp.cpp): a recursion and the work itself.
namespace mathlib {

__attribute__((noipa)) long spin(long n) {
    long acc = 0;
    for (long i = 0; i < n; i++) {
        acc = acc * 6364136223846793005L + i;
        __asm__ volatile("" : "+r"(acc));
    }
    return acc;
}

// DEPTH frames of itself above the work, each using the result (no tail call). The empty asm on
// the result after the call keeps gcc from turning the recursion into a loop with an accumulator.
__attribute__((noipa)) long reduce(long n, int depth) {
    if (depth <= 1) return spin(n) + 1;
    long r = reduce(n, depth - 1);
    __asm__ volatile("" : "+r"(r));
    return r * 3 + depth;
}

}  // namespace mathlib
