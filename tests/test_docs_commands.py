"""Every `featstore`/`heads` command in the README's and docs' runnable blocks names a real command and only
options that command has; every Python block compiles. (`benchmarks/docs_blocks.py run` executes them.)"""
from __future__ import annotations

import glob
import os
import shlex

import click
import pytest

from benchmarks.docs_blocks import blocks, commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _cli(tool: str) -> click.Group:
    if tool == "featstore":
        from cli.featstore_cli import main
    else:
        from cli.heads_cli import main
    return main


def _problems(line: str) -> list[str]:
    """Parse a command line with the CLI's own parser (types, choices, required options; nothing runs)."""
    words = shlex.split(line)
    for stop in ("|", "&&", ";", ">", "2>&1"):  # the first command of a pipe or a list
        words = words[:words.index(stop)] if stop in words else words
    if words[:2] == ["python", "-m"]:
        words = words[2:]
    if not words or words[0] not in ("featstore", "heads"):
        return []
    cmd, name, args = _cli(words[0]), words[0], words[1:]
    try:
        while isinstance(cmd, click.Group):
            sub = cmd.get_command(click.Context(cmd), args[0]) if args else None
            if sub is None:
                return [f"{line}: {name} has no command {args[:1]}"]
            cmd, name, args = sub, args[0], args[1:]
        cmd.make_context(name, list(args))
    except click.exceptions.Exit:  # --help
        pass
    except click.ClickException as e:
        return [f"{line}: {e.format_message()}"]
    return []


def _shown_commands(path: str) -> list[tuple[int, str]]:
    """Command lines in the other fenced blocks (templates, transcripts with `$ `), without `...` placeholders."""
    out, block, start, diagram = [], None, 0, False
    for n, line in enumerate(open(path, encoding="utf-8").read().splitlines(), 1):
        if line.strip().startswith("```"):
            if block is not None and not diagram:  # ```text blocks are diagrams and output, not commands
                text = "\n".join(x.strip()[2:] if x.strip().startswith("$ ") else x.strip() for x in block)
                out += [(start, c) for c in commands(text) if "..." not in c]
            diagram = block is None and line.strip() == "```text"
            block, start = (None, 0) if block is not None else ([], n)
        elif block is not None:
            block.append(line)
    return out


@pytest.mark.parametrize("path", FILES)
def test_documented_commands_exist_with_their_options(path):
    full = os.path.join(ROOT, path)
    problems = []
    for lang, text, line in blocks(full):
        if lang == "python":
            compile(text, f"{path}:{line}", "exec")
    problems += [f"{path}:{line}: {p}" for line, c in _shown_commands(full) for p in _problems(c)]
    assert problems == []


def test_the_readme_has_runnable_blocks_and_a_short_contents():
    found = blocks(os.path.join(ROOT, "README.md"))
    assert sum(lang == "sh" for lang, _, _ in found) >= 4 and any(lang == "python" for lang, _, _ in found)
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().splitlines()
    assert len(text) <= 260 and any(line.startswith("## Contents") for line in text[:40])
    for wrong in ("featstore frob", "featstore extract --model m --data train=x --out o --project D/4",
                  "featstore convert a b --layers", "heads train ytuning --stor x"):
        assert _problems(wrong), wrong
    assert _problems("featstore convert a b --layers 6") == []
