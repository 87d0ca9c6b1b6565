"""A parent whose children exec: one a program that is not CPython
(`ls`, which allocates), one another CPython that leaks at a known line.

usage: exec_children.py PYTHON COUNT SIZE

It prints "ready" and waits for a line on stdin; then runs `ls` to its
end and prints "other PID"; then starts PYTHON leak_buffers.py COUNT SIZE
--wait, prints "python PID", and passes the next line of its stdin on to
it, so that a tracer can be seen to adopt it before it leaks.
"""

import os
import subprocess
import sys


def main():
    python, count, size = sys.argv[1:4]
    print("ready", flush=True)
    sys.stdin.readline()
    other = subprocess.Popen(["ls", "-l", "/usr/lib"], stdout=subprocess.DEVNULL)
    other.wait()
    print("other", other.pid, flush=True)
    leak = os.path.join(os.path.dirname(os.path.abspath(__file__)), "leak_buffers.py")
    child = subprocess.Popen(
        [python, leak, count, size, "--wait"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    child.stdout.readline()
    print("python", child.pid, flush=True)
    child.stdin.write(sys.stdin.readline())
    child.stdin.flush()
    child.stdout.read()
    sys.exit(child.wait())


if __name__ == "__main__":
    main()
