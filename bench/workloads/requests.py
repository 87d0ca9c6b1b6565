"""A request loop, as a web service's handler runs without the network:
per request a few calls, a parsed "query", a response dict rendered to a
string; a 2 KiB buffer every 8th request (a body read). Most of it is
small objects from CPython's allocator; libc sees the buffers and the
larger strings."""

from _harness import run


def parse(query):
    return dict(part.split("=", 1) for part in query.split("&"))


def lookup(params, i):
    return {"id": i, "user": params.get("user", ""), "items": [i, i + 1, i + 2]}


def render(response):
    return ",".join("%s=%s" % (k, v) for k, v in sorted(response.items()))


def handle(i):
    params = parse("user=u%d&page=%d&sort=name" % (i % 97, i % 13))
    body = bytearray(2048) if i % 8 == 0 else b""
    return len(render(lookup(params, i))) + len(body)


def work(scale):
    total = 0
    for i in range(int(50_000 * scale)):
        total += handle(i)
    return {"checksum": total}


run(work)
