"""Runs a command under a pseudo-terminal of a given width and prints everything it wrote.

    python3 pty_run.py COLUMNS COMMAND [ARGS...]

The window size is set on the terminal before the command starts, so the command sees a real
terminal of that width (isatty and TIOCGWINSZ), as a person's would. Used by the terminal-width
tests; nothing of ours reads it otherwise.
"""
import fcntl
import os
import pty
import struct
import sys
import termios


def main():
    cols = int(sys.argv[1])
    cmd = sys.argv[2:]
    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
        os.environ.pop("COLUMNS", None)
        os.execvp(cmd[0], cmd)
    out = bytearray()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    sys.stdout.buffer.write(bytes(out))
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
