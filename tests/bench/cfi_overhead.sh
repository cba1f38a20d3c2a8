#!/usr/bin/env bash
# Issue 13 benchmark: what `.eh_frame` unwinding costs a CPU-bound target without frame pointers.
#   tests/bench/cfi_overhead.sh AGENT HZ ROUNDS WINDOW_S OUT
# One target (tests/targets/cfi_spin.c, -O2 -fomit-frame-pointer, 18 frames deep) for the whole
# run. Per round, three windows of WINDOW_S in rotating order: no agent, AGENT attached with
# --frame-pointers-only (bpf_get_stackid: 2-3 frames, truncated), AGENT attached as by default
# (.eh_frame tables: whole stacks), both at HZ. Prints per window the target's iterations per wall
# second and per CPU second; per agent window, from the kernel's program statistics
# (bpf_stats_enabled), eBPF runs and run time of cpu_sample (tail calls included) over the
# agent's life, the target's samples and truncated samples from its report, and run time per
# target sample (an upper bound: other processes' samples, which leave at the first lookup,
# are in the run time too).
set -euo pipefail
AGENT=$1 HZ=$2 ROUNDS=$3 W=$4 OUT=$5
mkdir -p "$OUT"; : > "$OUT/marks"
HERE=$(cd "$(dirname "$0")/../.." && pwd)
cc -O2 -fomit-frame-pointer -o "$OUT/cfi_spin" "$HERE/tests/targets/cfi_spin.c"
sysctl -qw kernel.bpf_stats_enabled=1
echo "load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs"
coproc T { exec "$OUT/cfi_spin" "$OUT/marks"; }
read -r _ PID <&"${T[0]}"
sleep 1
mark() { kill -USR1 "$PID"; sleep 0.05; tail -n1 "$OUT/marks"; }
window() { # LABEL: one window, prints label it/s it/cpu-s
  local a b; a=$(mark); sleep "$W"; b=$(mark)
  awk -v l="$1" -v a="$a" -v b="$b" 'BEGIN{split(a,x," ");split(b,y," ");
    printf "window %s %.1f %.1f\n", l, (y[1]-x[1])/((y[3]-x[3])/1e9), (y[1]-x[1])/((y[2]-x[2])/1e9)}'
}
with_agent() { # LABEL [FLAGS...]
  local label=$1; shift
  "$AGENT" attach --pid "$PID" --frequency "$HZ" --duration 600 --quiet --json "$OUT/$label.json" \
    --folded "$OUT/$label.folded" "$@" > /dev/null 2> "$OUT/$label.log" &
  local ag=$!
  for _ in $(seq 100); do grep -q "attached to pid" "$OUT/$label.log" 2>/dev/null && break; sleep 0.1; done
  sleep 0.5
  local before after; before='[]'
  window "$label"
  after=$(bpftool -j prog show name cpu_sample 2>/dev/null || echo '[]')
  kill -INT "$ag"; wait "$ag" || true
  python3 - "$label" "$before" "$after" "$OUT/$label.json" <<'PYEOF'
import json, sys
def progs(t):
    v = json.loads(t); v = v if isinstance(v, list) else [v]
    return {p["id"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0)) for p in v}
# This agent's program: the newest cpu_sample (bpftool here lists no owning pids).
before, after = progs(sys.argv[2]), progs(sys.argv[3])
ours = max(after) if after else None
# Totals since the program was loaded, i.e. over the agent's whole sampling life, which is what
# its report's samples cover too (the stats are read just before it is stopped).
t1, c1 = after.get(ours, (0, 0))
cpu = json.load(open(sys.argv[4]))["cpu"]
print(f"ebpf {sys.argv[1]} runs {c1} run_time_ns {t1} samples {cpu['samples']} truncated {cpu['truncated']} "
      f"ns_per_sample {t1 / max(cpu['samples'], 1):.0f}")
PYEOF
}
for i in $(seq "$ROUNDS"); do
  case $((i % 3)) in
    0) window none; with_agent fp --frame-pointers-only; with_agent cfi ;;
    1) with_agent fp --frame-pointers-only; with_agent cfi; window none ;;
    2) with_agent cfi; window none; with_agent fp --frame-pointers-only ;;
  esac
done
kill "$PID"
