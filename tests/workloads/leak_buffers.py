"""Leaks COUNT buffers of SIZE bytes at one known line, then exits.

usage: leak_buffers.py COUNT SIZE [--wait]
With --wait it prints "ready" and waits for a line on stdin before leaking,
so that a tracer can attach to it by pid first.
"""

import sys

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


if __name__ == "__main__":
    main()
