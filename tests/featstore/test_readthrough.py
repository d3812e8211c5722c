"""What a new user's read-through of the docs found, fixed: `convert --layers` alone subsets, `ls` of a local
directory does not call its stores published, progress bars stay out of redirected logs, and the span task's
truncation default is the one `--help` states."""
from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner

import featstore
from cli.featstore_cli import main
from featstore.extract import ExtractConfig
from featstore.share import ls

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_convert_layers_alone_keeps_the_encoding(shared_store, tmp_path):
    dst = str(tmp_path / "top")
    r = CliRunner().invoke(main, ["convert", shared_store, dst, "--layers", "2"])
    assert r.exit_code == 0, r.output
    with featstore.open_store(dst) as s, featstore.open_store(shared_store) as src:
        assert s.layers == [2] and s.encoding == src.encoding
        assert (s.split("train").pooled("mean", 2) == src.split("train").pooled("mean", 2)).all()


def test_ls_of_a_local_directory_says_complete_not_published(shared_store):
    entries, problems = ls(os.path.dirname(shared_store))
    assert problems == [] and [(e["name"], e["status"]) for e in entries] == [("sst2", "complete")]


def test_progress_bars_stay_out_of_redirected_stderr(shared_store):
    p = subprocess.run([sys.executable, "-m", "featstore", "verify", shared_store], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert p.returncode == 0 and "OK" in p.stdout
    assert "checksums" not in p.stderr and "\r" not in p.stderr, p.stderr


def test_truncation_default_depends_on_the_task():
    sentence = ExtractConfig(model="m", data={"train": "x"}, out="o")
    span = ExtractConfig(model="m", data={"train": "x"}, out="o", task="span")
    sentence.validate()
    span.validate()
    assert sentence.truncation == "longest_first" and span.truncation == "only_second"
    help_text = CliRunner().invoke(main, ["extract", "--help"], terminal_width=200).output
    assert "default: longest_first; --task span: only_second" in " ".join(help_text.split())
