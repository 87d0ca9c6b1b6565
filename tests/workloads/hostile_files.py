"""A hostile process for tests/tests/hostile_files.rs, run as nobody.

It maps four crafted allocator libraries from DIR (ctypes, RTLD_LOCAL: its
own malloc stays the real one), then, while tracer runs, keeps changing
what their paths name:
- mid/libc.so.6: allocation symbols inside instructions (hostile_libc.S);
- trunc/libc.so.6: truncated to 100 bytes and restored, over and over;
- link/libc.so.6: its directory swapped, over and over, with one whose
  libc.so.6 is a symbolic link to the host's libc;
- fifo/libc.so.6: its directory swapped with one whose libc.so.6 is a FIFO.
On "go" from stdin it leaks COUNT buffers of 10,000 bytes at the LEAK line,
says "leaked", and on "stop" exits without unwinding (its truncated
library must not be touched again).
"""

import ctypes
import os
import sys
import threading
import time

directory, count = sys.argv[1], int(sys.argv[2])
libraries = [
    ctypes.CDLL(os.path.join(directory, name, "libc.so.6"))
    for name in ("mid", "trunc", "link", "fifo")
]
truncated = os.path.join(directory, "trunc", "libc.so.6")
with open(truncated, "rb") as f:
    whole = f.read()


def truncate_and_restore():
    while True:
        with open(truncated, "r+b") as f:
            f.truncate(100)
            time.sleep(0.002)
            f.seek(100)
            f.write(whole[100:])
        time.sleep(0.002)


def swap(name):
    real = os.path.join(directory, name)
    decoy = os.path.join(directory, name + "-decoy")
    spare = os.path.join(directory, name + "-spare")
    while True:
        os.rename(real, spare)
        os.rename(decoy, real)
        time.sleep(0.001)
        os.rename(real, decoy)
        os.rename(spare, real)
        time.sleep(0.001)


for job, args in ((truncate_and_restore, ()), (swap, ("link",)), (swap, ("fifo",))):
    threading.Thread(target=job, args=args, daemon=True).start()

print("ready", flush=True)
kept = []
for line in sys.stdin:
    if line.strip() == "go":
        for _ in range(count):
            kept.append(bytearray(10_000))  # LEAK
            time.sleep(0.0005)
        print("leaked", flush=True)
    elif line.strip() == "stop":
        os._exit(0)
