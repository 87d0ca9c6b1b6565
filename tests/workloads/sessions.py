"""Leaks COUNT Session objects, each holding a 2 KiB bytes object and a dict
(pympler's class tracker would count them), at known lines.

usage: sessions.py COUNT [--wait]

With --wait it reads a line from stdin before leaking (so that a tracer
attached by --pid sees the leak happen), prints "leaked", and then waits
for stdin to close.
"""

import sys


class Session:
    def __init__(self, i):
        self.payload = b"%08d" % i * 256  # PAYLOAD
        self.meta = {"id": i, "user": "u%d" % i}  # META


SESSIONS = []


def open_sessions(count):
    for i in range(count):
        SESSIONS.append(Session(i))  # SESSION


if __name__ == "__main__":
    count = int(sys.argv[1])
    wait = "--wait" in sys.argv
    if wait:
        print("ready", flush=True)
        sys.stdin.readline()
    open_sessions(count)
    print("leaked", flush=True)
    if wait:
        sys.stdin.read()
