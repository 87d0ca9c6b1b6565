"""Short-lived children, as a service that shells out: subprocess.run of
/bin/true, one after another. Each child is forked from the traced
process (CPython 3.11's subprocess uses vfork), execs a program that is
not CPython and exits: tracer follows it from its fork and lets it go at
its exec. The run measures what following costs a process that forks."""

import subprocess

from _harness import run


def work(scale):
    children = int(1_000 * scale)
    for _ in range(children):
        subprocess.run(["/bin/true"], check=True)
    return {"children": children}


run(work)
