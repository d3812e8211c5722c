"""Training and evaluation never import transformers: `heads train` + `heads eval` in a fresh interpreter."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CODE = r"""
import json, sys
import torch
torch.set_num_threads(1)
from cli.heads_cli import main
for args in json.loads(sys.argv[1]):
    try:
        main(args, standalone_mode=False)
    except SystemExit as e:
        if e.code:
            raise
print("BACKBONE-MODULES " + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "tokenizers"))))
"""


def test_train_and_eval_never_import_transformers(stores, tmp_path):
    out = str(tmp_path / "run")
    calls = [["train", "ytuning", "--store", stores["h5"], "--label-column", "label", "--out", out, "--epochs", "1",
              "--d-head", "16", "--n-layers", "1", "--n-heads", "2", "--quiet"],
             ["train", "linear", "--store", stores["h5"], "--label-column", "label", "--out", out + "-lin", "--quiet"],
             ["eval", out, "--store", stores["h5"], "--split", "test"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, "-c", CODE, json.dumps(calls)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert os.path.isfile(os.path.join(out, "head.safetensors")) and "accuracy" in p.stdout
    line = [x for x in p.stdout.splitlines() if x.startswith("BACKBONE-MODULES ")][-1]
    assert json.loads(line.split(" ", 1)[1]) == []
