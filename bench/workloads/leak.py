"""A steady leak amid normal work: each of 10,000 iterations keeps one
10,000-byte buffer for good (at LEAK_LINE) and makes and drops some
temporaries (their number scales). The leak does not scale: 100 MB is what
sampling needs to be judged within a few percent."""

from _harness import run

KEPT = []
LEAK_SIZE = 10_000


def work(scale):
    n = 10_000
    temporaries = max(1, int(50 * scale))
    for i in range(n):
        KEPT.append(bytes(LEAK_SIZE))  # LEAK_LINE
        scratch = [bytearray(2048) for _ in range(temporaries)]
        scratch.append(str(i) * 40)
    return {"leaked_objects": n, "leak_size": LEAK_SIZE}


run(work)
