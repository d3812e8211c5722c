"""Benchmark scripts: each prints a table and writes JSON (`--json`); see RESULTS.md."""
import json
import os
from typing import Any


def write_json(path: str, result: Any) -> None:
    """A benchmark's result as indented JSON, its folder made if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
