"""For the growth tests: one linear leak, one cache that fills to a cap and
stops, one periodic spike. Starts once the file named by argv[1] exists
(tracer is attached), then runs for argv[2] seconds."""

import os
import sys
import time

go, seconds = sys.argv[1], float(sys.argv[2])
LEAKED = []
CACHE = {}
CACHE_CAP = 24


def leak():
    LEAKED.append(bytes(512 * 1024))  # LEAK


def remember(i):
    if len(CACHE) < CACHE_CAP:
        CACHE[i] = bytes(512 * 1024)  # CACHE


def spike():
    return bytearray(16 << 20)  # SPIKE


print("waiting", flush=True)
while not os.path.exists(go):
    time.sleep(0.02)
start = time.time()
i = 0
while time.time() - start < seconds:
    i += 1
    if i % 5 == 0:
        leak()
    remember(i)
    if i % 20 == 10:
        s = spike()
        time.sleep(0.3)
        del s
    time.sleep(0.1)
