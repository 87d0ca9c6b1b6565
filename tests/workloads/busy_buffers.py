"""Allocates and frees small buffers as fast as it can, until killed: a
busy recording (the daemon's rotating-capture test)."""

print("ready", flush=True)
kept = []
i = 0
while True:
    i += 1
    b = bytearray(600 + i % 400)  # BUSY
    if i % 100 == 0:
        kept.append(b)
        if len(kept) > 1000:
            kept.clear()
