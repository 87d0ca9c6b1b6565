"""A small service for tracer's demo.

It handles simulated requests for a few seconds. It has one leak (responses
kept in a cache that is never evicted) and one hotspot (every response is
rendered into a fresh buffer that is dropped right after it is sent).
"""

import json
import sys
import time

RESPONSE_CACHE = {}  # never evicted: the leak


def render(request_id):
    payload = {"id": request_id, "items": list(range(64)), "status": "ok"}
    body = json.dumps(payload).encode()
    return bytearray(body * 40)  # ~16 KiB per response: the hotspot


def remember(request_id, response):
    RESPONSE_CACHE[request_id] = bytes(response) + bytes(48 * 1024)  # the leak


def handle(request_id):
    response = render(request_id)
    if request_id % 10 == 0:
        remember(request_id, response)
    return len(response)


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    deadline = time.monotonic() + seconds
    served = 0
    sent = 0
    while time.monotonic() < deadline:
        for _ in range(50):
            sent += handle(served)
            served += 1
        time.sleep(0.01)
    print(f"demo_service: served {served} requests, {sent} bytes, cached {len(RESPONSE_CACHE)}")


if __name__ == "__main__":
    main()
