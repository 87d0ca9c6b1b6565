"""Four threads at once, two churning small objects and two moving
buffers: the GIL hands over between them, probes fire on every core."""

import threading

from _harness import run


def churn(n, out):
    total = 0
    for i in range(n):
        row = {"k": i, "v": "value-%d" % i}
        total += len(row["v"])
    out.append(total)


def buffers(n, out):
    total = 0
    for i in range(n):
        total += len(bytearray(1024 + (i % 16) * 1024))
    out.append(total)


def work(scale):
    out = []
    threads = [
        threading.Thread(target=f, args=(int(n * scale), out))
        for f, n in [(churn, 300_000), (churn, 300_000), (buffers, 150_000), (buffers, 150_000)]
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"checksum": sum(out)}


run(work)
