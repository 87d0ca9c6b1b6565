"""Worker threads that leak buffers at one line and finish. glibc keeps a
finished thread's stack (8 MiB) mapped for the next thread: a mapping as
large as the leak that is no leak.

usage: thread_stacks.py WORKERS COUNT SIZE
"""

import sys
import threading

LEAKED = []


def work(count, size):
    for _ in range(count):
        LEAKED.append(bytearray(size))  # LEAK


def main():
    workers, count, size = (int(a) for a in sys.argv[1:4])
    threads = [
        threading.Thread(target=work, args=(count, size)) for _ in range(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
