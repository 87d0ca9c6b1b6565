"""Decodes a gzipped pprof profile with the official profile.proto (compiled
by protoc for Python's protobuf package), checks that every reference in it
resolves, and prints what the tests compare as JSON: each sample type's
total, and the heaviest sample of each type with its frames.

usage: pprof_read.py PROTO_DIR PROFILE.pb.gz
"""

import gzip
import json
import sys

sys.path.insert(0, sys.argv[1])
import profile_pb2  # noqa: E402


def main():
    with open(sys.argv[2], "rb") as f:
        raw = gzip.decompress(f.read())
    p = profile_pb2.Profile()
    p.ParseFromString(raw)
    strings = list(p.string_table)
    assert strings and strings[0] == "", "string_table[0] must be empty"

    def string(i):
        assert 0 <= i < len(strings), f"string index {i} out of range"
        return strings[i]

    functions = {fn.id: fn for fn in p.function}
    locations = {loc.id: loc for loc in p.location}
    mappings = {m.id: m for m in p.mapping}
    assert 0 not in functions and 0 not in locations and 0 not in mappings
    types = [(string(t.type), string(t.unit)) for t in p.sample_type]
    totals = [0] * len(types)
    heaviest = [None] * len(types)
    for s in p.sample:
        assert len(s.value) == len(types), "a sample without a value per type"
        frames = []
        for lid in s.location_id:
            loc = locations[lid]
            assert loc.mapping_id == 0 or loc.mapping_id in mappings
            for line in loc.line:
                fn = functions[line.function_id]
                frames.append(
                    {
                        "function": string(fn.name),
                        "filename": string(fn.filename),
                        "line": line.line,
                    }
                )
        for label in s.label:
            string(label.key)
        for i, v in enumerate(s.value):
            totals[i] += v
            if v > 0 and (heaviest[i] is None or v > heaviest[i]["value"]):
                heaviest[i] = {"value": v, "frames": frames}
    print(
        json.dumps(
            {
                "types": [f"{t}/{u}" for t, u in types],
                "default": string(p.default_sample_type),
                "totals": dict(zip([t for t, _ in types], totals)),
                "heaviest": dict(zip([t for t, _ in types], heaviest)),
                "samples": len(p.sample),
            }
        )
    )


main()
