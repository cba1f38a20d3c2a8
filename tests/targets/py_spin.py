"""CPU-bound Python for the overhead benchmark (issue 14): spins in a call chain a few frames
deep; on each SIGUSR1 appends `iterations thread_cpu_ns monotonic_ns` to the file in argv[1].

Usage: py_spin.py MARKS_FILE   (prints `READY <pid>`)
"""

import os
import signal
import sys
import time

count = 0


def mark(*_):
    with open(sys.argv[1], "a") as f:
        f.write(f"{count} {time.thread_time_ns()} {time.monotonic_ns()}\n")


def leaf(n):
    x = 0
    for i in range(n):
        x += i * i
    return x


def middle(n):
    return leaf(n)


def outer(n):
    return middle(n)


def main():
    global count
    signal.signal(signal.SIGUSR1, mark)
    print(f"READY {os.getpid()}", flush=True)
    while True:
        outer(1000)
        count += 1


if __name__ == "__main__":
    main()
