"""The runnable blocks of the README and docs: fenced ```sh and ```python blocks, in order.

`python benchmarks/docs_blocks.py run README.md --cwd DIR` runs them one after another in DIR (after
`make demo` made `demo_out/` there), stopping at the first failure; `list` prints them. Output blocks are
fenced without a language (or as ```text) and never run. tests/test_docs_commands.py checks every command line
against the CLI's options without running it.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time

FENCE = re.compile(r"^```(\w*)\s*$")
RUNNABLE = ("sh", "python")
SETUP = ("pip ", "make ")  # installing and `make demo` / `make test`: what a fresh clone runs first, not re-run here


def blocks(path: str) -> list[tuple[str, str, int]]:
    """(language, text, first line number) of every runnable fenced block of a Markdown file."""
    out, lang, start, buf = [], None, 0, []
    for n, line in enumerate(open(path, encoding="utf-8").read().splitlines(), 1):
        m = FENCE.match(line.strip())
        if m and lang is None:
            lang, start, buf = m.group(1), n + 1, []
        elif line.strip() == "```" and lang is not None:
            if lang in RUNNABLE:
                out.append((lang, "\n".join(buf) + "\n", start))
            lang = None
        elif lang is not None:
            buf.append(line)
    return out


def commands(text: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split("#")[0].split()
        if words:
            out.append(shlex.join(words))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["list", "run"])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--cwd", default=".", help="Directory to run in (holding demo_out/ from `make demo`).")
    args = ap.parse_args()
    for path in args.files:
        for lang, text, line in blocks(path):
            steps = commands(text) if lang == "sh" else [text]
            for step in steps:
                where = f"{path}:{line}"
                print(f"--- {where} ({lang})\n{step.rstrip()}", flush=True)
                if args.action == "list":
                    continue
                if step.startswith(SETUP):
                    print("--- skipped (set-up command)", flush=True)
                    continue
                t0 = time.time()
                cmd = ["bash", "-c", step] if lang == "sh" else [sys.executable, "-c", step]
                p = subprocess.run(cmd, cwd=args.cwd, env={**os.environ})
                print(f"--- exit {p.returncode} in {time.time() - t0:.1f} s", flush=True)
                if p.returncode != 0:
                    sys.exit(f"{where}: failed with exit code {p.returncode}")


if __name__ == "__main__":
    main()
