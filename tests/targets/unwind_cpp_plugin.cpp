// libunwcppplugin.so for the C++ unwinding fixture (unwind_cpp.cpp), dlopen'ed after the agent
// attached: a virtual method that calls into libunwcpp.so.
namespace mathlib {
long reduce(long n, int depth);
}

namespace plugin {
struct Decoder {
    virtual long run(long n) = 0;
    virtual ~Decoder() = default;
};

class GreedyDecoder : public Decoder {
   public:
    __attribute__((noipa)) long run(long n) override { return mathlib::reduce(n, 5) + 7; }
};
}  // namespace plugin

extern "C" plugin::Decoder *make_decoder() { return new plugin::GreedyDecoder(); }
