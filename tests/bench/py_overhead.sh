#!/usr/bin/env bash
# Issue 14 benchmark: what Python unwinding costs a CPU-bound Python target.
#   tests/bench/py_overhead.sh AGENT_PY AGENT_NATIVE PYTHON HZ PAIRS WINDOW_S OUT
# AGENT_PY: this branch's inferscope; AGENT_NATIVE: one without Python unwinding (main's).
# One target (tests/targets/py_spin.py) for the whole run. Per pair, three windows of WINDOW_S
# in rotating order: no agent, AGENT_NATIVE attached, AGENT_PY attached (both at HZ). Prints
# per window the target's iterations per wall second and per CPU second; and, from the kernel's
# program statistics, eBPF ns per run of cpu_sample (tail calls included) for each agent.
set -euo pipefail
AGENT_PY=$1 AGENT_NATIVE=$2 PY=$3 HZ=$4 PAIRS=$5 W=$6 OUT=$7
mkdir -p "$OUT"; : > "$OUT/marks"
HERE=$(cd "$(dirname "$0")/../.." && pwd)
sysctl -qw kernel.bpf_stats_enabled=1
coproc T { exec "$PY" "$HERE/tests/targets/py_spin.py" "$OUT/marks"; }
read -r _ PID <&"${T[0]}"
sleep 1
mark() { kill -USR1 "$PID"; sleep 0.05; tail -n1 "$OUT/marks"; }
window() { # LABEL: one window, prints label it/s it/cpu-s
  local a b; a=$(mark); sleep "$W"; b=$(mark)
  awk -v l="$1" -v a="$a" -v b="$b" 'BEGIN{split(a,x," ");split(b,y," ");
    printf "%s %.1f %.1f\n", l, (y[1]-x[1])/((y[3]-x[3])/1e9), (y[1]-x[1])/((y[2]-x[2])/1e9)}'
}
with_agent() { # LABEL AGENT
  "$2" attach --pid "$PID" --frequency "$HZ" --duration 600 --quiet --json "$OUT/$1.json" \
    --folded "$OUT/$1.folded" > /dev/null 2> "$OUT/$1.log" &
  local ag=$!
  for _ in $(seq 100); do grep -q "attached to pid" "$OUT/$1.log" 2>/dev/null && break; sleep 0.1; done
  sleep 0.5
  local before; before=$(bpftool -j prog show name cpu_sample 2>/dev/null || echo '[]')
  window "$1"
  local after; after=$(bpftool -j prog show name cpu_sample 2>/dev/null || echo '[]')
  python3 - "$1" "$before" "$after" "$ag" <<'PYEOF'
import json, sys
def progs(t):
    v = json.loads(t); v = v if isinstance(v, list) else [v]
    return {p["id"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0)) for p in v}
# This agent's program: the newest cpu_sample (bpftool here lists no owning pids).
before, after = progs(sys.argv[2]), progs(sys.argv[3])
ours = max(after) if after else None
(t0, c0), (t1, c1) = before.get(ours, (0, 0)), after.get(ours, (0, 0))
print(f"ebpf {sys.argv[1]} runs {c1 - c0} run_time_ns {t1 - t0}")
PYEOF
  kill -INT "$ag"; wait "$ag" || true
  python3 -c 'import json,sys; print("samples", sys.argv[2], json.load(open(sys.argv[1]))["cpu"]["samples"])' "$OUT/$1.json" "$1"
}
for i in $(seq "$PAIRS"); do
  case $((i % 3)) in
    0) window none; with_agent native "$AGENT_NATIVE"; with_agent python "$AGENT_PY" ;;
    1) with_agent native "$AGENT_NATIVE"; with_agent python "$AGENT_PY"; window none ;;
    2) with_agent python "$AGENT_PY"; window none; with_agent native "$AGENT_NATIVE" ;;
  esac
done
kill "$PID"
