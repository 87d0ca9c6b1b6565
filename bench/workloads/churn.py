"""Small-object churn: dicts, tuples, short strings and lists made and
dropped at once. CPython's object allocator (pymalloc) serves nearly all of
it; libc sees almost nothing."""

from _harness import run


def work(scale):
    total = 0
    for i in range(int(1_000_000 * scale)):
        row = {"id": i, "name": "item-%d" % i, "tags": ("a", "b", str(i))}
        total += len(row["name"]) + len([row, row["tags"]])
    return {"checksum": total}


run(work)
