"""Grows until killed: every 50 ms it keeps 20 more 10 KB buffers (the
leak, at a known line), allocates and drops a 50 KB buffer (churn), and
keeps 200 more Order objects (with __slots__: no dict each), the type
that grows.

usage: growing.py [orders]   (orders: only the Order objects grow)
"""

import sys
import time

KEPT = []
ORDERS = []


class Order:
    __slots__ = ("qty", "price")

    def __init__(self, qty):
        self.qty = qty
        self.price = qty


def leak():
    KEPT.append(bytearray(10_000))  # LEAK


def churn():
    return bytes(50_000)  # CHURN


def add_orders(n):
    for i in range(n):
        ORDERS.append(Order(i % 100))  # ORDER


def main(orders_only):
    print("ready", flush=True)
    while True:
        if not orders_only:
            for _ in range(20):
                leak()
            churn()
        add_orders(200)
        time.sleep(0.05)


if __name__ == "__main__":
    main("orders" in sys.argv[1:])
