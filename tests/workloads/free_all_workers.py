"""Forks two workers that allocate and free the same sizes in step, so
that their buffers have the same addresses in both: each frees
everything it allocated (sampled map keyed by process and address).

Usage: free_all_workers.py ROUNDS BUFFERS SIZE; waits for a line on stdin
before forking (so that tracer --all has adopted the parent).
"""

import os
import sys
import time


def work(rounds, buffers, size):
    for _ in range(rounds):
        kept = [bytearray(size) for _ in range(buffers)]  # WORK
        del kept
        time.sleep(0.005)


def main():
    rounds, buffers, size = (int(a) for a in sys.argv[1:4])
    sys.stdin.readline()
    workers = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            work(rounds, buffers, size)
            os._exit(0)
        workers.append(pid)
    for pid in workers:
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
    print(" ".join(str(p) for p in workers), flush=True)


main()
