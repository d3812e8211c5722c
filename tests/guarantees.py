"""Counters behind docs/guarantees.md: a test that injects faults records how many it injected and how many the
code survived (refused cleanly or read correctly). Inert unless FEATSTORE_GUARANTEES_JSON names a file, which
`benchmarks/guarantees.py` sets when it runs these tests to write the document."""
from __future__ import annotations

import json
import os


def record(guarantee: str, test: str, injected: int, survived: int) -> None:
    path = os.environ.get("FEATSTORE_GUARANTEES_JSON")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"guarantee": guarantee, "test": test, "injected": injected, "survived": survived}) + "\n")
