"""A loopback ingestion server for the daemon tests: it takes what Grafana
Pyroscope and Parca take, as their handlers read it, and refuses what they
refuse, with their status codes; every profile is decoded with pprof's
official profile.proto (compiled by protoc), independently of tracer.

  * Pyroscope's /ingest: `name` parsed by the rules of Pyroscope's
    labelset parser (APP{k=v,...}), `from`/`until` as its attime reads
    them, `format=pprof` meaning the body is the profile (gzipped or not),
    a multipart form with a `profile` field when no format is given; the
    series' labels as Pyroscope builds them (`__name__` from the sample
    types: memory for alloc_*/inuse_*, `__delta__`, `pyroscope_spy`,
    `service_name`), and its validation (30 labels at most, profile time
    within an hour back and 10 minutes ahead, 16,000 samples, sample types
    without '-', references in range).
  * Pyroscope's connect API, /push.v1.PusherService/Push (what the
    pyroscope-io Python client 1.x sends): a PushRequest in protobuf.
  * Parca's WriteRaw through its HTTP gateway, /api/profiles/writeraw: the
    JSON form of WriteRawRequest, `__name__` required, label names by
    Prometheus' rule, no duplicates, and Parca's pprof checks (string 0
    empty, sequential ids, references in range).

POST /control {"status": 503, "retry_after": "1", "count": 3, "path":
"/ingest"} answers the next `count` pushes (to `path`, or any) so, forever
without a count; the tests drive outages with it. Each request is logged as one JSON line to --log.

usage: ingest_server.py --proto-dir DIR --port PORT --log FILE
"""

import argparse
import base64
import email.parser
import email.policy
import gzip
import http.server
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ARGS = None
LOCK = threading.Lock()
CONTROL = {"status": 200, "retry_after": None, "count": None, "path": None}
MAX_BODY = 64 << 20


class Reject(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


# --- profiles ---------------------------------------------------------------


def parse_pprof(raw, parca=False):
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except Exception as e:  # noqa: BLE001
            raise Reject(400, f"decompressing profile: {e}")
    p = profile_pb2.Profile()
    try:
        p.ParseFromString(raw)
    except Exception as e:  # noqa: BLE001
        raise Reject(400, f"failed to parse profile: {e}")
    strings = list(p.string_table)
    n = len(strings)
    if strings and strings[0] != "":
        raise Reject(400, "first item in string table is expected to be empty string")

    def ref(i, what):
        if i < 0 or i >= max(n, 1):
            raise Reject(400, f"{what} has invalid string index {i}")

    if parca:
        for kind, items in (("mapping", p.mapping), ("function", p.function), ("location", p.location)):
            for i, item in enumerate(items):
                if item.id != i + 1:
                    raise Reject(400, f"{kind} id is not sequential")
    for f in p.function:
        if f.id == 0:
            raise Reject(400, "function id is 0")
        ref(f.name, "function")
        ref(f.filename, "function")
    functions = {f.id for f in p.function}
    mappings = {m.id for m in p.mapping}
    locations = {}
    for loc in p.location:
        if loc.id == 0:
            raise Reject(400, "location id is 0")
        if loc.mapping_id and loc.mapping_id not in mappings:
            raise Reject(400, "location has invalid mapping id")
        for line in loc.line:
            if line.function_id not in functions:
                raise Reject(400, "location has invalid function id")
        locations[loc.id] = loc
    if not p.sample_type and p.sample:
        raise Reject(400, "missing sample type information")
    types = []
    for st in p.sample_type:
        ref(st.type, "sample type")
        ref(st.unit, "sample type")
        if "-" in strings[st.type]:
            raise Reject(400, "sample type contains -")
        types.append(strings[st.type])
    if not parca and len(p.sample) > 16000:
        raise Reject(400, f"profile has too many samples: {len(p.sample)}")
    totals = [0] * len(types)
    samples = []
    for s in p.sample:
        if len(s.value) != len(types):
            raise Reject(400, "sample value length mismatch")
        frames = []
        for lid in s.location_id:
            if lid not in locations:
                raise Reject(400, "sample location is out of range")
            for line in locations[lid].line:
                fn = next(f for f in p.function if f.id == line.function_id)
                frames.append(
                    {"function": strings[fn.name], "file": strings[fn.filename], "line": line.line}
                )
        for lab in s.label:
            if parca and lab.key == 0:
                raise Reject(400, "sample label has no key")
            ref(lab.key, "label")
            ref(lab.str, "label")
        for i, v in enumerate(s.value):
            totals[i] += v
        samples.append({"values": list(s.value), "frames": frames})
    period_type = None
    if p.HasField("period_type"):
        ref(p.period_type.type, "period type")
        period_type = f"{strings[p.period_type.type]}/{strings[p.period_type.unit]}"
    samples.sort(key=lambda s: -s["values"][-1] if s["values"] else 0)
    return {
        "types": [f"{strings[t.type]}/{strings[t.unit]}" for t in p.sample_type],
        "totals": dict(zip(types, totals)),
        "time_nanos": p.time_nanos,
        "duration_nanos": p.duration_nanos,
        "period_type": period_type,
        "period": p.period,
        "default": strings[p.default_sample_type] if p.default_sample_type < n else None,
        "samples": len(p.sample),
        "top": samples[:30],
    }


def metric_name(summary):
    """Pyroscope's metricName for a pprof pushed to /ingest."""
    names = [t.split("/")[0] for t in summary["types"]]
    if "wall" in names:
        return "wall"
    for st in names:
        if "cpu" in st:
            return "process_cpu"
        if "alloc_" in st or "inuse_" in st or st in ("space", "objects"):
            return "memory"
        if "mutex_" in st:
            return "mutex"
        if "block_" in st:
            return "block"
        if "goroutines" in st:
            return "goroutines"
    return names[-1] if names else ""


def check_time(summary):
    t = summary["time_nanos"]
    if t > 0:
        now = time.time_ns()
        if t < now - 3600 * 10**9:
            raise Reject(400, "profile is older than 1h (reject_older_than)")
        if t > now + 600 * 10**9:
            raise Reject(400, "profile is newer than 10m (reject_newer_than)")


LEGACY_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def validate_pyroscope_labels(labels):
    if len(labels) > 30:
        raise Reject(400, f"profile series has {len(labels)} label names; limit 30")
    if not labels.get("service_name"):
        raise Reject(400, "service name is not provided")
    for k, v in labels.items():
        if len(k) > 1024 or len(v) > 2048:
            raise Reject(400, f"label {k} too long")
        if not re.match(r"^[a-zA-Z_][a-zA-Z0-9_.]*$", k):
            raise Reject(400, f"invalid label name '{k}'")


# --- Pyroscope /ingest -------------------------------------------------------

LABEL_RUNE = re.compile(r"^[a-zA-Z0-9_.]+$")
SERVICE_RUNE = re.compile(r"^[a-zA-Z0-9_./-]+$")


def parse_name(name):
    """Pyroscope's labelset.Parse: APP{k=v,...}."""
    labels = {}
    state, key, value = "name", "", ""
    for r in name + "{":
        if state == "name":
            if r == "{":
                state = "tags"
                service = value.strip()
                if not service:
                    raise Reject(400, "name: service name is required")
                if not SERVICE_RUNE.match(service):
                    raise Reject(400, f"name: invalid service name: {service}")
                labels["__name__"] = service
            else:
                value += r
        elif state == "tags":
            if r == "}":
                state = "done"
            elif r == "=":
                state = "value"
                value = ""
            else:
                key += r
        elif state == "value":
            if r in ",}":
                state = "tags"
                k = key.strip()
                if k != "__name__":
                    if not k:
                        raise Reject(400, "name: label name is required")
                    if not LABEL_RUNE.match(k):
                        raise Reject(400, f"name: invalid label name: {k}")
                labels[k] = value.strip()
                key = ""
            else:
                value += r
    return labels


def attime(s, default):
    s = s.strip().replace("_", "").replace(",", "").replace(" ", "")
    if not s:
        return default
    if s.isdigit():
        v = int(s)
        return {13: v / 1e3, 16: v / 1e6, 19: v / 1e9}.get(len(s), v)
    raise Reject(400, f"from/until {s!r}: relative times are not spoken by this test server")


def multipart_profile(body, content_type):
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    fields = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[name] = part.get_payload(decode=True)
    if fields.get("prev_profile"):
        raise Reject(400, "unsupported client version")
    if "profile" not in fields:
        raise Reject(400, "no profile field in the form")
    return fields["profile"]


def ingest(handler, body, record):
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query, keep_blank_values=True)
    get = lambda k: q.get(k, [""])[0]  # noqa: E731
    tags = parse_name(get("name"))
    record["name"] = get("name")
    now = time.time()
    record["from"] = attime(get("from"), now)
    record["until"] = attime(get("until"), now)
    spy = get("spyName") or "unknown"
    record["spy"] = spy
    fmt = get("format")
    ctype = handler.headers.get("Content-Type", "")
    if fmt == "pprof":
        raw = body
    elif fmt in ("", None) and "multipart/form-data" in ctype:
        raw = multipart_profile(body, ctype)
    else:
        raise Reject(422, f"format {fmt!r} is not spoken by this test server")
    summary = parse_pprof(raw)
    check_time(summary)
    labels = {"__name__": metric_name(summary), "__delta__": "false", "pyroscope_spy": spy}
    if "service_name" not in tags:
        labels["service_name"] = tags["__name__"]
    for k, v in tags.items():
        if not k.startswith("__"):
            labels[k] = v
    validate_pyroscope_labels(labels)
    record["labels"] = labels
    record["profile"] = summary


# --- Pyroscope connect Push ---------------------------------------------------


def push(handler, body, record):
    if handler.headers.get("Content-Encoding", "") == "gzip":
        body = gzip.decompress(body)
    req = push_pb2.PushRequest()
    try:
        req.ParseFromString(body)
    except Exception as e:  # noqa: BLE001
        raise Reject(400, f"invalid PushRequest: {e}")
    series = []
    for s in req.series:
        labels = {lp.name: lp.value for lp in s.labels}
        validate_pyroscope_labels(labels)
        for sample in s.samples:
            summary = parse_pprof(sample.raw_profile)
            check_time(summary)
            series.append({"labels": labels, "profile": summary})
    if not series:
        raise Reject(400, "no profiles received")
    record["series"] = series


# --- Parca WriteRaw -----------------------------------------------------------


def write_raw(handler, body, record):
    try:
        req = json.loads(body)
    except ValueError as e:
        raise Reject(400, f"invalid JSON: {e}")
    out = []
    for s in req.get("series", []):
        ls = (s.get("labels") or {}).get("labels") or []
        labels, name = {}, ""
        for lab in ls:
            k, v = lab.get("name", ""), lab.get("value", "")
            if k == "__name__":
                name = v
                continue
            if not LEGACY_NAME.match(k):
                raise Reject(400, f"invalid label name: {k}")
            if k in labels:
                raise Reject(400, f"duplicate label name: {k}")
            labels[k] = v
        if not name:
            raise Reject(400, "missing __name__ label")
        for sample in s.get("samples", []):
            b64 = sample.get("rawProfile", sample.get("raw_profile", ""))
            try:
                raw = base64.b64decode(b64, validate=True)
            except ValueError:
                raw = base64.urlsafe_b64decode(b64)
            summary = parse_pprof(raw, parca=True)
            types = []
            for t in summary["types"]:
                st, unit = t.split("/")
                pt, pu = (summary["period_type"] or "/").split("/")
                delta = ":delta" if summary["duration_nanos"] != 0 else ""
                types.append(f"{name}:{st}:{unit}:{pt}:{pu}{delta}")
            out.append({"name": name, "labels": labels, "profile_types": types, "profile": summary})
    record["series"] = out


# --- the server ---------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, body=b"", ctype="text/plain", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        if length > MAX_BODY:
            self.reply(413, b"request body too large")
            return
        body = self.rfile.read(length)
        path = urllib.parse.urlsplit(self.path).path
        if path == "/control":
            with LOCK:
                CONTROL.update(json.loads(body))
            self.reply(200, b"ok")
            return
        kinds = {
            "/ingest": ("pyroscope-ingest", ingest),
            "/push.v1.PusherService/Push": ("pyroscope-push", push),
            "/api/profiles/writeraw": ("parca", write_raw),
        }
        if path not in kinds:
            self.reply(404, b"404 page not found")
            return
        kind, handle = kinds[path]
        record = {
            "kind": kind,
            "at": time.time(),
            "path": self.path,
            "content_type": self.headers.get("Content-Type"),
            "tenant": self.headers.get("X-Scope-OrgID"),
            "authorization": self.headers.get("Authorization"),
            "user_agent": self.headers.get("User-Agent"),
        }
        with LOCK:
            forced, retry_after = 200, None
            if CONTROL["path"] in (None, path):
                forced = CONTROL["status"]
                retry_after = CONTROL["retry_after"]
                if CONTROL["count"] is not None:
                    CONTROL["count"] -= 1
                    if CONTROL["count"] <= 0:
                        CONTROL.update({"status": 200, "retry_after": None, "count": None, "path": None})
        status, message = 200, ""
        try:
            handle(self, body, record)
        except Reject as r:
            status, message = r.status, r.message
        except Exception as e:  # noqa: BLE001
            status, message = 400, f"{type(e).__name__}: {e}"
        # A forced answer still logs what was sent, decoded.
        if forced != 200:
            status, message = forced, f"forced {forced}"
        record["status"] = status
        if message:
            record["error"] = message
        with LOCK, open(ARGS.log, "a") as f:
            f.write(json.dumps(record) + "\n")
        headers = [("Retry-After", retry_after)] if status != 200 and retry_after else []
        if kind == "parca":
            body = b"{}" if status == 200 else json.dumps({"code": 3, "message": message, "details": []}).encode()
            self.reply(status, body, "application/json", headers)
        elif kind == "pyroscope-push":
            if status == 200:
                self.reply(200, b"", "application/proto", headers)
            else:
                err = json.dumps({"code": "invalid_argument", "message": message}).encode()
                self.reply(status, err, "application/json", headers)
        else:
            self.reply(status, (message or "").encode(), "text/plain", headers)


def main():
    global ARGS, profile_pb2, push_pb2
    parser = argparse.ArgumentParser()
    parser.add_argument("--proto-dir", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", required=True)
    ARGS = parser.parse_args()
    sys.path.insert(0, ARGS.proto_dir)
    import profile_pb2 as p  # noqa: E402

    profile_pb2 = p
    here = os.path.dirname(os.path.abspath(__file__))
    out = tempfile.mkdtemp(prefix="push-proto-")
    subprocess.run(
        ["protoc", "--proto_path", here, "--python_out", out, os.path.join(here, "pyroscope_push.proto")],
        check=True,
    )
    sys.path.insert(0, out)
    import pyroscope_push_pb2 as q  # noqa: E402

    push_pb2 = q
    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            # A client closing its kept-alive connection is no error.
            if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", ARGS.port), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


profile_pb2 = None
push_pb2 = None
main()
