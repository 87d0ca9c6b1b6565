"""Large buffers: byte strings of 1 KiB to 256 KiB (above pymalloc's 512-byte
limit, so libc's malloc, and mmap for the largest), each freed soon after."""

from _harness import run

SIZES = [1024, 4096, 16384, 65536, 262144]


def work(scale):
    total = 0
    for i in range(int(250_000 * scale)):
        buf = bytearray(SIZES[i % len(SIZES)])
        buf[0] = i & 0xFF
        total += len(bytes(buf[:2048]))
    return {"checksum": total}


run(work)
