"""The shape of the package: imports run one way, and the CLI's help does not pay for torch."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

HEADS = os.path.join(os.path.dirname(__file__), "..", "..", "heads")
ROOT = os.path.abspath(os.path.join(HEADS, ".."))


def _module(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _resolve(importer: str, is_package: bool, level: int, name: str | None) -> str:
    base = importer.split(".")
    base = base if is_package else base[:-1]
    if level > 1:
        base = base[:-(level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph(package: str = "heads") -> dict[str, set[str]]:
    """Module of `package` -> modules of it that it imports anywhere in its body (functions included); the
    package's own `__init__` (its public names, imported lazily) is left out."""
    modules = {}
    for d, _, files in os.walk(os.path.join(ROOT, package)):
        for f in files:
            if f.endswith(".py"):
                modules[_module(os.path.join(d, f))] = os.path.join(d, f)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_package = path.endswith("__init__.py")
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_package, node.level, node.module) if node.level else node.module
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in modules:  # `import heads.tasks.base` imports heads.tasks.base (and its parents)
                    t = t.rpartition(".")[0]
                if t and t != mod and t != package:
                    graph[mod].add(t)
    return graph


@pytest.mark.parametrize("package, importer, imported", [("heads", "heads.tasks.classification", "heads.tasks.base"),
                                                          ("featstore", "featstore.store.manifest",
                                                           "featstore.store.formats")])
def test_no_module_imports_one_that_imports_it_back(package, importer, imported):
    graph = import_graph(package)
    assert len(graph) > 15 and imported in graph[importer]  # the parser sees imports

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(m for m in graph if m in reach(m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_import_graph_test_sees_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: two modules that import each other are reported."""
    pkg = tmp_path / "heads"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from heads import a\n")
    monkeypatch.setattr(sys.modules[__name__], "HEADS", str(pkg))
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    graph = import_graph()
    assert graph["heads.a"] == {"heads.b"} and graph["heads.b"] == {"heads.a"}


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["eval", "--help"], ["predict", "--help"]])
def test_help_does_not_import_torch(args):
    code = ("import runpy, sys; sys.argv = ['heads', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('heads', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr
    assert "Usage:" in r.stdout and r.stdout.strip().endswith("NO-TORCH"), r.stdout[-300:]


def test_public_names_still_import():
    import heads
    import heads.evaluate
    import heads.predict
    import heads.train  # noqa: F401 - the submodules do not replace the functions of the same names

    assert heads.train.__module__ == "heads.train" and heads.TrainConfig.__name__ == "TrainConfig"
    assert callable(heads.evaluate) and callable(heads.predict) and callable(heads.train)
    from heads import EvalResult, HeadSpec, LoadedHead, evaluate, load_head, predict  # noqa: F401
    with pytest.raises(AttributeError):
        heads.no_such_name  # noqa: B018
