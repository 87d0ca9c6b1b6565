"""A pre-fork server in miniature: the parent loads data, forks WORKERS
workers, and each worker makes COUNT buffers of SIZE bytes at a known line
(dropped at once), keeps one in KEEP_EVERY of them at another known line
(its leak), and frees the data it inherited from the parent before it
exits.

usage: prefork.py COUNT [--wait-before-fork | --wait-after-fork]

With --wait-before-fork the parent prints "ready" and waits for a line on
stdin before loading its data and forking; with --wait-after-fork it forks first, prints
"ready" with the workers' pids, and the workers wait until the parent
passes on a line from stdin.
"""

import os
import sys

WORKERS = 2
SIZE = 10_000
KEEP_EVERY = 100
PRELOADED = 100
# What a worker keeps until it exits: its leak.
LEAKED = []


def preload():
    return [bytes(SIZE + 3) for _ in range(PRELOADED)]  # PRELOAD


def work(count, inherited):
    kept = []
    for i in range(count):
        buf = bytearray(SIZE)  # WORK
        if i % KEEP_EVERY == 0:
            kept.append(bytes(SIZE + 7))  # KEEP
        del buf
    # Frees what the parent allocated before the fork: matched in the child.
    inherited.clear()
    return kept


def main():
    count = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else ""
    if mode == "--wait-before-fork":
        print("ready", flush=True)
        sys.stdin.readline()
    data = preload()
    pids = []
    gates = []
    for _ in range(WORKERS):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            if mode == "--wait-after-fork":
                os.read(read_end, 1)
            LEAKED.extend(work(count, data))
            print("worker", os.getpid(), len(LEAKED), flush=True)
            sys.exit(0)
        os.close(read_end)
        pids.append(pid)
        gates.append(write_end)
    if mode == "--wait-after-fork":
        print("ready", " ".join(map(str, pids)), flush=True)
        sys.stdin.readline()
    for gate in gates:
        os.write(gate, b"g")
        os.close(gate)
    status = 0
    for pid in pids:
        _, code = os.waitpid(pid, 0)
        status |= code
    print("parent", os.getpid(), "done", flush=True)
    sys.exit(1 if status else 0)


if __name__ == "__main__":
    main()
