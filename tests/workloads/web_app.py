"""A small Flask JSON service with a planted leak, served by gunicorn in
the pre-fork tests: every request to /leak renders a response and keeps
one SIZE-byte buffer per request forever (the leak, at a known line).

gunicorn -w 2 -b 127.0.0.1:PORT --chdir tests/workloads web_app:app
"""

from flask import Flask, jsonify

SIZE = 10_000

app = Flask(__name__)
KEPT = []


@app.route("/")
def index():
    return jsonify(status="ok")


@app.route("/leak")
def leak():
    KEPT.append(bytes(SIZE))  # LEAK
    return jsonify(kept=len(KEPT))
