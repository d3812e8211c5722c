"""README: nothing in a store or a head is ever unpickled. The sources never reach for pickle (this file); every
artefact loads with unpickling disabled (tests/featstore/test_no_pickle.py, tests/heads/test_no_pickle.py)."""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _sources():
    for pkg in ("featstore", "heads", "cli"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, pkg)):
            for n in names:
                if n.endswith(".py"):
                    yield os.path.join(dirpath, n)


def _problems(path: str) -> list[str]:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = []
    for node in ast.walk(tree):
        mods = []
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out += [(node, f"imports {m}") for m in mods
                if m.split(".")[0] in PICKLERS or m in ("torch.load", "torch.serialization.load")]
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("torch.load", "torch.serialization.load", "pickle.load", "pickle.loads"):
                out.append((node, f"calls {name}"))
            if any(k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in node.keywords):
                out.append((node, f"calls {name} with allow_pickle"))
    return [f"{os.path.relpath(path, ROOT)}:{n.lineno}: {what}" for n, what in out]


def test_no_source_reaches_for_pickle():
    sources = list(_sources())
    assert len(sources) > 20
    problems = [p for s in sources for p in _problems(s)]
    assert problems == []


@pytest.mark.parametrize("code", ["import pickle", "from joblib import load", "torch.load(f)",
                                  "np.load(p, allow_pickle=True)", "import torch.serialization as s; "
                                  "from torch.serialization import load"])
def test_the_scan_sees_pickle(tmp_path, code):
    p = tmp_path / "m.py"
    p.write_text(code + "\n")
    assert _problems(str(p))
