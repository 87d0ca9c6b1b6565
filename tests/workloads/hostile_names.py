"""A leak in a function whose name and file name hold terminal escapes, a
bidirectional override and line ends, as a hostile process may choose
them: tracer prints them escaped.

Usage: hostile_names.py COUNT SIZE [ARGS...] (ARGS: more hostile text on
the command line).
"""

import sys

NAME = "evil\x1b]0;owned\x07\x1b[2J\u202eemanrif\nsecond line"
FILE = "/tmp/\x1b[31mred\rfile\n.py"

count, size = int(sys.argv[1]), int(sys.argv[2])
namespace = {}
# First line 40: the kernel knows a code object by address and first line,
# and a code object freed at start-up (first line 1) may leave its address
# to this one.
source = "\n" * 39 + "def f(count, size):\n    return [bytearray(size) for _ in range(count)]\n"
exec(compile(source, FILE, "exec"), namespace)
f = namespace["f"]
f.__code__ = f.__code__.replace(co_name=NAME, co_qualname=NAME)
kept = f(count, size)
