"""Leaks COUNT strings of about 150 bytes each (CPython's object allocator
serves them, not libc) at one known line.

usage: small_leak.py COUNT
"""

import sys

LEAKED = []


def make_strings(count):
    for i in range(count):
        LEAKED.append("%0100d" % i)  # LEAK


if __name__ == "__main__":
    make_strings(int(sys.argv[1]))
