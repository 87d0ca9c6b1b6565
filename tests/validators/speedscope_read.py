"""Validates a speedscope file against speedscope's published JSON schema
(file-format-schema.json from its npm package) and prints, as JSON, each
profile's name, unit and total weight, and the frames of its heaviest
sample, outermost first.

usage: speedscope_read.py SCHEMA FILE
"""

import json
import sys

import jsonschema


def main():
    with open(sys.argv[1]) as f:
        schema = json.load(f)
    with open(sys.argv[2]) as f:
        doc = json.load(f)
    jsonschema.validate(doc, schema)
    frames = doc["shared"]["frames"]
    out = []
    for profile in doc["profiles"]:
        assert profile["type"] == "sampled", profile["type"]
        samples, weights = profile["samples"], profile["weights"]
        assert len(samples) == len(weights), "a weight per sample"
        top = max(range(len(weights)), key=weights.__getitem__, default=None)
        out.append(
            {
                "name": profile["name"],
                "unit": profile["unit"],
                "total": sum(weights),
                "heaviest": None
                if top is None
                else [frames[i] for i in samples[top]],
            }
        )
    print(json.dumps(out))


main()
