"""A service for the daemon's soak (`cargo xtask soak`): requests that
render fresh buffers (churn), a bounded cache (steady once full), until
killed. With an argument, a short-lived job: allocates for that many
seconds and exits."""

import collections
import sys
import time

CACHE = collections.OrderedDict()
CACHE_CAP = 200


def handle(i):
    body = bytearray(20_000 + (i % 50) * 1000)  # RENDER
    key = i % 1000
    if key not in CACHE:
        CACHE[key] = bytes(8_000)  # CACHE
        if len(CACHE) > CACHE_CAP:
            CACHE.popitem(last=False)
    return len(body)


deadline = time.time() + float(sys.argv[1]) if len(sys.argv) > 1 else float("inf")
print("serving", flush=True)
i = 0
while time.time() < deadline:
    i += 1
    handle(i)
    time.sleep(0.002)
