"""A steady leak amid normal work: every iteration keeps one 10,000-byte
buffer for good (at LEAK_LINE) and makes and drops some temporaries."""

from _harness import run

KEPT = []
LEAK_SIZE = 10_000


def work(scale):
    n = int(5_000 * scale)
    for i in range(n):
        KEPT.append(bytes(LEAK_SIZE))  # LEAK_LINE
        scratch = [bytearray(2048) for _ in range(100)]
        scratch.append(str(i) * 40)
    return {"leaked_objects": n, "leak_size": LEAK_SIZE}


run(work)
