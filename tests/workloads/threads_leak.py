"""Two threads, each leaking buffers of its own size in its own function.

usage: threads_leak.py
"""

import threading

LEAKED = []


def leak_in_a(count, size):
    for _ in range(count):
        LEAKED.append(bytearray(size))  # LEAK A


def leak_in_b(count, size):
    for _ in range(count):
        LEAKED.append(bytearray(size))  # LEAK B


def main():
    a = threading.Thread(target=leak_in_a, args=(200, 300_000))
    b = threading.Thread(target=leak_in_b, args=(100, 500_000))
    a.start()
    b.start()
    a.join()
    b.join()


if __name__ == "__main__":
    main()
