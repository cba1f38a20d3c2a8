// libunwplugin.so, dlopen'ed by the unwinding fixture (unwind.c) after the agent attached.
long shared_leaf(long n);

__attribute__((noipa)) long plugin_beta(long n) { return shared_leaf(n) * 5 + 1; }
