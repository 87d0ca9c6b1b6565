"""Makes new code objects without end, each allocation under a chain of
DEPTH of them never seen before: every allocation asks the kernel to copy
DEPTH code objects (up to ~4.7 KB each).

Usage: code_flood.py SECS
"""

import sys
import time

DEPTH = 80


def chain(n):
    calls = "".join(f"def f{i}(k):\n    return f{i + 1}(k)\n" for i in range(DEPTH))
    source = calls + f"def f{DEPTH}(k):\n    return bytearray(600)\n"
    namespace = {}
    exec(compile(source, f"flood{n}.py", "exec"), namespace)
    return namespace["f0"]


def main():
    end = time.monotonic() + float(sys.argv[1])
    n = 0
    print("flooding", flush=True)
    while time.monotonic() < end:
        chain(n)(0)
        n += 1
    print(f"{n} chains", flush=True)


main()
