"""Leaks COUNT buffers of SIZE bytes at one known line, then exits.

usage: leak_buffers.py COUNT SIZE [--wait] [--linger SECS]
With --wait it prints "ready" and waits for a line on stdin before leaking,
so that a tracer can attach to it by pid first. With --linger it stays
SECS seconds after leaking, as a service that leaked at start goes on.
"""

import sys
import time

LEAKED = []


def leak(count, size):
    for _ in range(count):
        LEAKED.append(bytearray(size))  # LEAK


def main():
    count, size = int(sys.argv[1]), int(sys.argv[2])
    if "--wait" in sys.argv:
        print("ready", flush=True)
        sys.stdin.readline()
    leak(count, size)
    print(f"leaked {count} x {size}", flush=True)
    if "--linger" in sys.argv:
        time.sleep(float(sys.argv[sys.argv.index("--linger") + 1]))


if __name__ == "__main__":
    main()
