"""One of each shape the reports find, at known lines: a leak, a spike
that makes the peak and is freed, temporary buffers, and a second thread
that leaks. Sizes are above pymalloc's 512 bytes, so each is a libc call.

usage: report_shapes.py
"""

import threading
import time

LEAK_COUNT = 200
LEAK_SIZE = 64 * 1024
SPIKE_SIZE = 32 * 1024 * 1024
TEMPORARY_COUNT = 2000
TEMPORARY_SIZE = 100_000
THREAD_COUNT = 100
THREAD_SIZE = 10_000

kept = []


def leak():
    for _ in range(LEAK_COUNT):
        kept.append(bytearray(LEAK_SIZE))  # LEAK


def spike():
    big = bytearray(SPIKE_SIZE)  # SPIKE
    time.sleep(0.4)  # seen by several memory samples
    del big


def churn():
    for _ in range(TEMPORARY_COUNT):
        buffer = bytearray(TEMPORARY_SIZE)  # TEMPORARY
        del buffer


def worker():
    for _ in range(THREAD_COUNT):
        kept.append(bytearray(THREAD_SIZE))  # THREAD


def main():
    leak()
    spike()
    churn()
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    time.sleep(0.3)


if __name__ == "__main__":
    main()
