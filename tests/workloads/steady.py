"""Allocates and frees steadily for SECONDS and prints a deterministic
checksum per round: its output must not change when it is traced, or when
its tracer is killed.

usage: steady.py ROUNDS
"""

import hashlib
import sys
import time


def round_digest(n):
    chunks = [bytes([n % 256]) * (1000 + i) for i in range(200)]
    return hashlib.sha256(b"".join(chunks)).hexdigest()[:16]


def main():
    rounds = int(sys.argv[1])
    print("started", flush=True)
    for n in range(rounds):
        print(n, round_digest(n), flush=True)
        time.sleep(0.02)
    print("finished", flush=True)


if __name__ == "__main__":
    main()
