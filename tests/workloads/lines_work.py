"""One function that allocates at three known lines with known sizes:
COUNT x 100,000 bytes kept (LINE A), COUNT x 50,000 bytes freed at once
(LINE B), COUNT x 200,000 bytes kept by a function it calls (LINE C); its
other lines allocate nothing.

usage: lines_work.py COUNT
"""

import sys

KEEP = []


def helper(n):
    for _ in range(n):
        KEEP.append(bytearray(200_000))  # HELPER


def work(n):
    total = 0  # NOTHING
    for _ in range(n):
        KEEP.append(bytearray(100_000))  # LINE A
        tmp = bytes(50_000)  # LINE B
        total += len(tmp)
    helper(n)  # LINE C
    return total  # RETURN


if __name__ == "__main__":
    work(int(sys.argv[1]))
