"""The worst case: nothing but allocation, as fast as CPython can go. Each
iteration makes and drops a 1,000-byte bytes object (libc malloc + free) and
a small tuple (pymalloc)."""

from _harness import run


def work(scale):
    n = int(3_000_000 * scale)
    for i in range(n):
        b = bytes(1000)
        t = (i, b)
    return {"iterations": n}


run(work)
