"""Token context in the heads (`--context-layers`, `--context`), stride windows in span heads, and labels absent
from train never predicted."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.heads_cli import main
from heads import TrainConfig, evaluate, predict, train
from heads.errors import InputError
from heads.nets import build_head
from heads.spec import HeadSpec
from heads.tasks.positions import Alignment
from heads.tasks.span import SpanExtraction
from heads.tasks.token import TokenTagging

from ..featstore.test_stride import windowed  # noqa: F401  (a fixture)
from .synthetic import TAGS, _directions, planted_tokens, write_store

SMALL = ["--d-head", "32", "--n-layers", "1", "--n-heads", "2", "--lr", "5e-3", "--epochs", "25", "--patience", "25",
         "--quiet", "--json"]


def neighbour_store(path: str) -> str:
    """Tags planted one token to the right of each word's first sub-word (a trailing [SEP] holds the last one):
    a word's tag is readable only from its neighbour, so only a head whose tokens see each other learns it."""
    u = _directions(len(TAGS), 16) * 6.0
    data = {}
    for i, (name, n) in enumerate({"train": 300, "validation": 80, "test": 120}.items()):
        d = planted_tokens(n, seed=700 + i, signal=0.0)  # noise only; the tags are planted below
        rng = np.random.default_rng(900 + i)
        for k, x in enumerate(d["features"]):
            x = np.concatenate([x, rng.standard_normal(x[:1].shape).astype(np.float32)])  # (T + 1, L, D)
            tags = d["token_tags"][k]
            for p in np.flatnonzero(tags >= 0):
                x[p + 1, -1] += u[tags[p]]
            d["features"][k] = x
            d["token_tags"][k] = np.concatenate([tags, [-100]])
            for key in d["per_token"]:
                d["per_token"][key][k] = np.concatenate([d["per_token"][key][k], [-1]])
        data[name] = d
    task = {"kind": "token", "scheme": "IOB2", "tag_names": TAGS, "repaired": 0,
            "splits": {k: {"truncated_words": 0} for k in data}}
    return write_store(path, data, layers=[1, 2], hidden=16, label_columns=[], segment_tokens=2048, task=task)


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory):
    return neighbour_store(str(tmp_path_factory.mktemp("ctx") / "st"))


def heads_train(store: str, out: str, *extra: str) -> dict:
    res = CliRunner().invoke(main, ["train", "ytuning", "--store", store, "--out", out, *SMALL, *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_a_tag_read_from_the_neighbour_needs_context(neighbours, tmp_path, kind):
    with_ctx = heads_train(neighbours, str(tmp_path / "k1"), "--context-layers", "1", "--context", kind)
    f1 = with_ctx["summary"]["test"]["f1"]["mean"]
    print(f"{kind} K=1 test entity F1 {f1:.3f}")
    assert f1 >= 0.85
    meta = json.loads((tmp_path / "k1" / "head.json").read_text())
    assert meta["architecture"]["context_layers"] == 1 and meta["architecture"]["context"] == kind
    if kind == "lstm":  # the same run without context cannot read the tags
        without = heads_train(neighbours, str(tmp_path / "k0"), "--context-layers", "0")
        print(f"K=0 test entity F1 {without['summary']['test']['f1']['mean']:.3f}")
        assert without["summary"]["test"]["f1"]["mean"] <= 0.5


def test_context_layers_zero_is_the_old_head():
    spec = HeadSpec(kind="ytuning", task="token", n_outputs=5, hidden_size=16, n_layers_in=2, d_head=32, n_heads=2)
    old = {k: v for k, v in spec.to_json().items() if k not in ("context_layers", "context")}
    assert HeadSpec.from_json(old, "head.json") == spec  # head.json files written before the option still load
    torch.manual_seed(0)
    a = build_head(spec)
    torch.manual_seed(0)
    b = build_head(HeadSpec(**{**spec.to_json(), "context": "transformer"}))  # K=0: the kind is ignored
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not any("context" in k for k in a.state_dict())


@pytest.mark.parametrize("task,kind", [("token", "lstm"), ("token", "transformer"), ("span", "lstm"),
                                       ("span", "transformer")])
def test_padding_never_changes_a_real_tokens_scores(task, kind):
    spec = HeadSpec(kind="ytuning", task=task, n_outputs=5 if task == "token" else 2, hidden_size=16, n_layers_in=2,
                    d_head=32, n_heads=2, context_layers=2, context=kind)
    torch.manual_seed(0)
    head = build_head(spec).eval()
    x = torch.randn(1, 7, 2, 16)  # (B, T, L, D)
    seg = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    padded = torch.cat([x, 50 * torch.randn(1, 5, 2, 16)], 1)  # garbage padding
    mask = torch.ones(1, 7, dtype=torch.bool)
    pmask = torch.cat([mask, torch.zeros(1, 5, dtype=torch.bool)], 1)
    args = (seg, torch.cat([seg, torch.ones(1, 5, dtype=torch.long)], 1)) if task == "span" else (None, None)
    with torch.no_grad():
        out = head(x, mask, args[0]) if task == "span" else head(x, mask)  # (1, 7, Y)
        out_p = head(padded, pmask, args[1]) if task == "span" else head(padded, pmask)  # (1, 12, Y)
    assert out.shape == (1, 7, spec.n_outputs) and out_p.shape == (1, 12, spec.n_outputs)
    torch.testing.assert_close(out_p[:, :7], out, atol=1e-5, rtol=1e-4)
    if task == "span":  # the head sees which tokens are question and which context
        with torch.no_grad():
            head.context.segment.weight.normal_()
            assert not torch.allclose(head(x, mask, seg), head(x, mask, 1 - seg))


def test_context_options_are_checked(neighbours, tmp_path):
    with pytest.raises(InputError, match="--context-layers works with ytuning"):
        train(TrainConfig("linear", store=neighbours, out=str(tmp_path / "a"), context_layers=2, progress=False))
    with pytest.raises(InputError, match="--context-layers -1"):
        TrainConfig("ytuning", store=neighbours, out=str(tmp_path / "b"), context_layers=-1).validate()
    res = CliRunner().invoke(main, ["train", "ytuning", "--store", neighbours, "--out", str(tmp_path / "c"),
                                    "--context", "gru"])
    assert res.exit_code == 2 and "gru" in res.output
    assert "--context-layers" in CliRunner().invoke(main, ["train", "--help"]).output


# -- stride windows ----------------------------------------------------------------------------------------

def windowed_alignment() -> tuple[Alignment, list[np.ndarray]]:
    """Two questions: q0 in two windows (its best span in the second), q1 in one window."""
    ctx0, ctx1 = "a b c d e f", "x y z"
    # window tokens: [CLS] question [SEP] context...; char_start -1 off the context
    w = [(ctx0, [-1, -1, -1, 0, 2, 4], [-1, -1, -1, 1, 3, 5]), (ctx0, [-1, -1, -1, 4, 6, 8, 10], [-1, -1, -1, 5, 7, 9, 11]),
         (ctx1, [-1, -1, 0, 2, 4], [-1, -1, 1, 3, 5])]
    lengths = [len(cs) for _, cs, _ in w]
    align = Alignment(offsets=np.concatenate([[0], np.cumsum(lengths)]),
                      word_index=np.concatenate([np.where(np.asarray(cs) >= 0, 0, -1) for _, cs, _ in w]),
                      char_start=np.concatenate([cs for _, cs, _ in w]), char_end=np.concatenate([ce for _, _, ce in w]),
                      gold=[{"context": c, "question": "q", "answers": [a]} for (c, _, _), a in
                            zip(w, ["d", "d", "y"])], question=np.array([0, 0, 1]))
    out = [np.zeros((n, 2), np.float32) for n in lengths]
    out[0][4] = [2.0, 2.0]  # "b" in window 0
    out[1][4] = [3.0, 3.0]  # "d" in window 1: the question's best
    out[2][3] = [1.0, 1.0]  # "y"
    return align, out


def test_each_question_is_answered_once_from_its_best_window():
    align, out = windowed_alignment()
    task = SpanExtraction()
    preds = task.decode(out, align)
    assert preds == [("d", 6, 7), ("d", 6, 7), ("y", 2, 3)]  # both windows of q0 carry its one answer
    m = task.metrics(out, preds, align)
    assert m["exact_match"] == 1.0 and m["f1"] == 1.0  # two questions, each counted once
    align.gold[0]["answers"] = align.gold[1]["answers"] = ["b"]
    assert task.metrics(out, preds, align)["exact_match"] == 0.5


def test_no_answer_threshold_is_chosen_on_dev():
    align, out = windowed_alignment()
    for lg in out:
        lg[0] = [1.8, 1.8]  # [CLS] beats q1's span (1 + 1) but not q0's (3 + 3)
    align.gold[2]["answers"] = []  # q1 has no answer
    task = SpanExtraction(null_answers=True)
    task.apply(task.decide(out, align))
    preds = task.decode(out, align)
    assert preds[2] == ("", -1, -1) and preds[0][0] == "d"
    assert task.metrics(out, preds, align)["f1"] == 1.0


@pytest.fixture(scope="module")
def windowed_run(windowed, tmp_path_factory):
    rows, st, *_ = windowed  # a --stride store of long QA contexts (tests/featstore/test_stride.py)
    run = str(tmp_path_factory.mktemp("stride-heads") / "run")
    train(TrainConfig("ytuning", store=st.path, out=run, dev_split="none", test_split="none", epochs=2, d_head=32,
                      n_layers=1, n_heads=2, progress=False))
    return rows, st.path, run


def test_stride_predict_equals_eval(windowed_run):
    rows, store, run = windowed_run
    ev = evaluate(run, store, "train")
    by_q: dict[str, dict] = {}
    for p in ev.predictions:
        by_q.setdefault(p["id"].split("#")[0], p)
    assert set(by_q) == {r["id"] for r in rows}
    recs = predict(run, [r["context"] for r in rows], [r["question"] for r in rows])
    assert [r["answer"] for r in recs] == [by_q[r["id"]]["answer"] for r in rows]
    assert [r["start"] for r in recs] == [by_q[r["id"]]["start"] if by_q[r["id"]]["answer"] else None for r in rows]


# -- labels absent from train ------------------------------------------------------------------------------

def test_untrained_tags_are_never_decoded_and_are_recorded(tmp_path):
    task = TokenTagging(["O", "B-X", "SYM"], None)
    task.fit(np.array([[0, 1, -100], [1, 0, 0]]), "train")
    assert task.untrained == ("SYM",) and task.to_meta()["untrained_labels"] == ["SYM"]
    assert TokenTagging.from_meta(task.to_meta()).untrained == ("SYM",)
    align = Alignment(offsets=np.array([0, 2]), word_index=np.array([0, 1]), char_start=np.array([0, 2]),
                      char_end=np.array([1, 3]), gold=[{"words": ["a", "$"], "tags": ["O", "SYM"]}])
    out = [np.array([[5.0, 0.0, 1.0], [0.0, 1.0, 9.0]])]  # the head's noise favours SYM on "$"
    preds = task.decode(out, align)
    assert preds == [["O", "B-X"]]
    assert task.metrics(out, preds, align)["accuracy"] == 0.5  # the gold SYM counts as an error
