"""Leaks one buffer DEPTH Python calls deep: deeper than tracer reads.

usage: deep.py DEPTH
"""

import sys

KEEP = []


def recurse(depth):
    if depth == 0:
        KEEP.append(bytearray(1 << 20))  # LEAK
        return
    recurse(depth - 1)


if __name__ == "__main__":
    recurse(int(sys.argv[1]))
