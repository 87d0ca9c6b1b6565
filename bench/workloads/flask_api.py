"""The benchmark's web service: a Flask JSON API of the usual shape (parse
the query, build a page of records, serialize it), served by gunicorn with
2 workers and driven by wrk over loopback (bench/src/overhead/web.rs). It keeps
nothing between requests.

gunicorn -w 2 -b 127.0.0.1:PORT --chdir bench/workloads flask_api:app
"""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.route("/items")
def items():
    page = int(request.args.get("page", "1"))
    records = [
        {
            "id": page * 100 + i,
            "name": f"item-{page}-{i}",
            "tags": ["a", "b", str(i % 7)],
            "price": round(i * 1.25, 2),
        }
        for i in range(20)
    ]
    # One buffer of a few KiB per request, as a rendered body would be.
    note = "x" * (2048 + page % 512)
    return jsonify(page=page, items=records, note_len=len(note))
