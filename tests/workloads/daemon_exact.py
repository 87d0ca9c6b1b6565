"""For the daemon's exact-totals tests: a steady mix of kept and freed
buffers, until killed. Prints "ready" once running."""

import sys
import time

kept = []
print("ready", flush=True)
deadline = time.time() + float(sys.argv[1]) if len(sys.argv) > 1 else float("inf")
i = 0
while time.time() < deadline:
    i += 1
    kept.append(bytearray(100_000))  # KEPT
    scratch = bytearray(50_000)  # FREED
    del scratch
    if len(kept) > 400:
        del kept[:200]
    time.sleep(0.01)
