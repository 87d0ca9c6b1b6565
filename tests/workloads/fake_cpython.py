"""A CPython 3.11 that lies about itself, for tests/tests/fake_cpython.rs.

With "hostile", before leaking it corrupts what tracer reads from it
(ctypes, its own memory):
- its frame chain becomes a cycle (the caller's frame says the leaking
  frame called it), so a walk that follows it never reaches the end;
- its leaking code object's line table and name claim to be 2^40 bytes
  long.
CPython reads neither while the function runs (no traceback, no tracing),
so the process keeps working; it never returns from the corrupted frame
and exits without unwinding. With "honest" it leaks the same way, unharmed.

Usage: fake_cpython.py honest|hostile COUNT; says "leaked" after COUNT
buffers of 10,000 bytes, then exits on "stop" from stdin.
"""

import ctypes
import os
import sys

HUGE = 1 << 40
mode, count = sys.argv[1], int(sys.argv[2])


def word(address):
    return ctypes.c_ssize_t.from_address(address)


def interpreter_frame(frame):
    """The _PyInterpreterFrame of a 3.11 frame object (its f_frame), checked
    against the code object it runs."""
    address = word(id(frame) + 24).value
    assert word(address + 32).value == id(frame.f_code), "not CPython 3.11's layout"
    return address


def work(kept):
    if mode == "hostile":
        mine = interpreter_frame(sys._getframe(0))
        caller = interpreter_frame(sys._getframe(1))
        word(caller + 48).value = mine  # caller.previous = this frame
        code = sys._getframe(0).f_code
        word(id(code.co_linetable) + 16).value = HUGE  # ob_size
        word(id(code.co_qualname) + 16).value = HUGE  # length
        word(id(code.co_name) + 16).value = HUGE
    for _ in range(count):
        kept.append(bytearray(10_000))  # LEAK
    sys.stdout.write("leaked\n")
    sys.stdout.flush()
    sys.stdin.readline()
    os._exit(0)


def caller():
    work([])


assert sys.version_info[:2] == (3, 11), sys.version
# Unique names: the name objects corrupted are this code object's alone.
name = "".join(["lying_", "work_", str(os.getpid())])
work.__code__ = work.__code__.replace(co_name=name, co_qualname=name)
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.readline()
caller()
