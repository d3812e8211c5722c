"""`--stride`: long QA contexts as overlapping windows, each an example linked to its question."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from click.testing import CliRunner

from cli.featstore_cli import main
from featstore import open_store
from featstore.extract import ExtractConfig, extract
from featstore.spans import best_answers

from ..conftest import WORDS

MAX_LENGTH, STRIDE = 32, 8


def qa_rows(n=6, seed=0):
    """Contexts of 50-70 words; answers at several places, so some fall in the overlap of two windows."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        words = rnd.choices(WORDS, k=rnd.randint(50, 70))
        at = rnd.randint(0, len(words) - 3)
        answer = " ".join(words[at:at + 2])
        start = len(" ".join(words[:at])) + (1 if at else 0)
        rows.append({"id": f"q{i}", "question": "which words come here ?", "context": " ".join(words),
                     "answers": [{"text": answer, "answer_start": start}] if i != 2 else []})
    rows.append({"id": "short", "question": "what ?", "context": "the red cat sits", "answers": [
        {"text": "red cat", "answer_start": 4}]})
    return rows


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def windowed(bert, tmp_path_factory):
    d = tmp_path_factory.mktemp("stride")
    rows = qa_rows()
    data = write_rows(d / "train.jsonl", rows)
    out = str(d / "st")
    s = extract(ExtractConfig(model=bert, data={"train": data}, out=out, task="span", layers="-1",
                              max_length=MAX_LENGTH, stride=STRIDE, progress=False))
    return rows, open_store(out), s, data, d


def by_question(sp):
    """{question row: [storage index of window 0, window 1, ...]}"""
    win = sp.span_windows()
    out: dict[int, list[int]] = {}
    for i in np.lexsort((win["window"], win["question"])):
        out.setdefault(int(win["question"][i]), []).append(int(i))
    return out


def context_tokens(sp, i):
    """(char_start, char_end) of example i's context tokens, in order."""
    a, b = sp.offsets[i], sp.offsets[i + 1]
    cs, ce = sp.token_array("char_start")[a:b], sp.token_array("char_end")[a:b]
    return [(int(x), int(y)) for x, y in zip(cs, ce) if x >= 0]


def test_windows_cover_every_context_token_and_overlap_as_asked(windowed, bert):
    from transformers import AutoTokenizer

    rows, st, _, _, _ = windowed
    tok = AutoTokenizer.from_pretrained(bert)
    sp = st.split("train")
    groups = by_question(sp)
    assert sorted(groups) == list(range(len(rows)))
    assert len(groups[len(rows) - 1]) == 1  # a short context: one window, as without --stride
    assert max(len(g) for g in groups.values()) >= 3
    for q, windows in groups.items():
        full = tok(rows[q]["context"], return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
        spans = [context_tokens(sp, i) for i in windows]
        assert sorted(set(t for s in spans for t in s)) == [tuple(x) for x in full]  # every context token, once
        for a, b in zip(spans, spans[1:]):
            assert a[-STRIDE:] == b[:STRIDE]  # consecutive windows share exactly --stride tokens
            assert b[STRIDE] > a[-1]  # and no more
        assert all(sp.lengths[i] <= MAX_LENGTH for i in windows)
        assert [sp.example_ids[i] for i in windows] == [f"{rows[q]['id']}#{k}" for k in range(len(windows))]
        assert {sp.gold()[i]["question_id"] for i in windows} == {rows[q]["id"]}


def test_answers_labelled_in_every_window_that_holds_them(windowed):
    rows, st, summary, _, _ = windowed
    sp = st.split("train")
    win, pos, gold = sp.span_windows(), sp.span_targets(), sp.gold()
    in_two = 0
    for q, windows in by_question(sp).items():
        answers = rows[q]["answers"]
        holding = 0
        for i in windows:
            toks = context_tokens(sp, i)
            inside = bool(answers) and toks[0][0] <= answers[0]["answer_start"] and \
                answers[0]["answer_start"] + len(answers[0]["text"]) <= toks[-1][1]
            assert win["answer_in_window"][i] == int(inside)
            if inside:
                a = sp.offsets[i]
                cs, ce = sp.token_array("char_start"), sp.token_array("char_end")
                s, e = pos[i]
                assert gold[i]["context"][cs[a + s]:ce[a + e]] == answers[0]["text"]
                holding += 1
            else:
                assert pos[i].tolist() == [0, 0]  # the no-answer target: token 0 ([CLS])
        assert holding >= 1 or not answers
        in_two += holding >= 2
    assert in_two >= 1  # the data put an answer in an overlap
    counts = st.task_info["splits"]["train"]
    assert counts["questions"] == len(rows) and counts["windows"] == sp.n_examples
    assert counts["answers_lost"] == 0 and counts["unanswerable"] == 1  # per question, not per window
    assert summary.truncated == 0 and summary.task_counts["train"]["windows"] == sp.n_examples
    assert st.manifest["settings"]["stride"] == STRIDE


def test_perfect_window_scores_give_each_question_its_answer_once(windowed):
    rows, st, _, _, _ = windowed
    sp = st.split("train")
    win, pos = sp.span_windows(), sp.span_targets()
    cs, ce, off = sp.token_array("char_start"), sp.token_array("char_end"), sp.offsets
    starts, ends, allowed, css, ces = [], [], [], [], []
    for i in range(sp.n_examples):  # a head that scores the stored targets highest
        n = int(off[i + 1] - off[i])
        s, e = np.zeros(n), np.zeros(n)
        s[pos[i, 0]] += 10.0
        e[pos[i, 1]] += 10.0
        starts.append(s)
        ends.append(e)
        css.append(cs[off[i]:off[i + 1]])
        ces.append(ce[off[i]:off[i + 1]])
        allowed.append(css[-1] >= 0)
    res = best_answers(starts, ends, allowed, css, ces, win["question"], n_best=5)
    assert [r.question for r in res] == list(range(len(rows)))
    for r in res:
        answers = rows[r.question]["answers"]
        if answers:
            best = r.best
            assert rows[r.question]["context"][best.char_start:best.char_end] == answers[0]["text"]
            assert [(x.char_start, x.char_end) for x in r.spans].count((best.char_start, best.char_end)) == 1
        else:
            assert r.null_score == 20.0  # every window of an unanswerable question points at token 0


def test_without_stride_the_store_is_unchanged(windowed, bert):
    rows, st, _, data, d = windowed
    out = str(d / "plain")
    extract(ExtractConfig(model=bert, data={"train": data}, out=out, task="span", layers="-1",
                          max_length=MAX_LENGTH, progress=False))
    plain = open_store(out)
    assert set(plain.manifest["settings"]) == {"layers", "max_length", "truncation", "pooling", "dtype", "task"}
    assert plain.split("train").span_windows() is None and plain.split("train").n_examples == len(rows)
    assert "question_id" not in plain.split("train").gold()[0]
    assert set(plain.task_info["splits"]["train"]) == {"answers_lost", "unanswerable"}
    assert plain.fingerprint != st.fingerprint
    again = str(d / "plain-again")
    extract(ExtractConfig(model=bert, data={"train": data}, out=again, task="span", layers="-1",
                          max_length=MAX_LENGTH, progress=False, stride=None))
    assert open_store(again).fingerprint == plain.fingerprint


def _cli(*args):
    return CliRunner().invoke(main, list(args))


def test_stride_refusals_one_line(windowed, bert, tmp_path):
    rows, _, _, data, _ = windowed
    conll = tmp_path / "t.conll"
    conll.write_text("a\tO\n\n")
    cases = [
        (["--task", "token", "--data", f"train={conll}", "--stride", "4"], "--stride windows the context"),
        (["--task", "span", "--data", f"train={data}", "--stride", "40", "--max-length", "32"],
         "--stride 40 must be smaller than --max-length 32"),
        (["--task", "span", "--data", f"train={data}", "--stride", "24", "--max-length", "32"],
         "question 'q0' has 5 tokens: at --max-length 32 it leaves 24 context tokens per window"),
        (["--task", "span", "--data", f"train={data}", "--stride", "4", "--truncation", "only_first"],
         "--truncation only_first with --stride"),
    ]
    for args, fragment in cases:
        out = tmp_path / "st"
        r = _cli("extract", "--model", bert, "--layers", "-1", "--out", str(out), "--quiet", *args)
        assert r.exit_code == 2, r.output
        err = r.stderr.strip()
        assert err.startswith("error: ") and "\n" not in err and fragment in err, err
        assert not out.exists()
    ok = _cli("extract", "--model", bert, "--layers", "-1", "--out", str(tmp_path / "ok"), "--quiet", "--task",
              "span", "--data", f"train={data}", "--stride", str(STRIDE), "--max-length", str(MAX_LENGTH))
    assert ok.exit_code == 0, ok.output
    assert f"train: 0 answers lost, 1 unanswerable, {len(rows)} questions" in ok.output
