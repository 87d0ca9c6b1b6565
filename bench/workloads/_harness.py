"""What every benchmark workload shares: it is started, sets up, says
"ready", waits for "go" on stdin (tracers attach in between), runs its work
phase, and prints one JSON line with how long that took."""

import json
import sys
import time


def run(work, **facts):
    """Runs work(scale) between the handshake and the timing line; `work`
    may return extra facts (expected leak bytes, ...) for the line."""
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("workload: expected 'go' on stdin")
    start = time.perf_counter()
    extra = work(scale) or {}
    elapsed = time.perf_counter() - start
    print(json.dumps({"elapsed_s": elapsed, **facts, **extra}), flush=True)
