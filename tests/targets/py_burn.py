"""CPU-bound Python with known shares, for the Python flamegraph tests (issue 14).

Usage: py_burn.py SECONDS TRUTH_JSON

Prints `READY <pid>`, waits for SIGUSR1 (so the profiler is attached first), then burns CPU for
SECONDS in four places and writes how much CPU time each one took, measured by the thread that
ran it (time.thread_time_ns around each chunk), to TRUTH_JSON:

- `leaf_a` under `outer_a` and `leaf_b` under `outer_b` (nested calls, 3:1 work), on a worker
  thread, which also runs
- `gen_values`, a generator consumed by `consume_gen`, and on the main thread
- `spin_coro`, an asyncio coroutine that yields to the loop between chunks.
"""

import asyncio
import json
import os
import signal
import sys
import threading
import time

CHUNK = 20000
truth = {"leaf_a": 0, "leaf_b": 0, "gen_values": 0, "spin_coro": 0}
lock = threading.Lock()


def record(name, ns):
    with lock:
        truth[name] += ns


def leaf_a(n):
    t0 = time.thread_time_ns()
    x = 0
    for i in range(n):
        x += i * i
    record("leaf_a", time.thread_time_ns() - t0)
    return x


def leaf_b(n):
    t0 = time.thread_time_ns()
    x = 0
    for i in range(n):
        x += i * i
    record("leaf_b", time.thread_time_ns() - t0)
    return x


def outer_a():
    return leaf_a(3 * CHUNK)


def outer_b():
    return leaf_b(CHUNK)


def gen_values(rounds):
    for _ in range(rounds):
        t0 = time.thread_time_ns()
        x = 0
        for i in range(CHUNK):
            x += i * i
        record("gen_values", time.thread_time_ns() - t0)
        yield x


def consume_gen():
    return sum(gen_values(2))


def worker(deadline):
    while time.monotonic() < deadline:
        outer_a()
        outer_b()
        consume_gen()


async def spin_coro(deadline):
    while time.monotonic() < deadline:
        t0 = time.thread_time_ns()
        x = 0
        for i in range(CHUNK):
            x += i * i
        record("spin_coro", time.thread_time_ns() - t0)
        await asyncio.sleep(0)


async def main_coro(deadline):
    await spin_coro(deadline)


def main():
    seconds, out = float(sys.argv[1]), sys.argv[2]
    go = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: go.set())
    print(f"READY {os.getpid()}", flush=True)
    go.wait(60)
    deadline = time.monotonic() + seconds
    t = threading.Thread(target=worker, args=(deadline,), name="worker")
    t.start()
    asyncio.run(main_coro(deadline))
    t.join()
    with open(out + ".tmp", "w") as f:
        json.dump(truth, f)
    os.rename(out + ".tmp", out)


if __name__ == "__main__":
    main()
