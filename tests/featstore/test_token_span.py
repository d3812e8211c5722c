"""Token and span tasks: reading, sub-word alignment, truncation, unanswerable questions, stores, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli.featstore_cli import main
from featstore import open_store
from featstore.extract import ExtractConfig, extract
from featstore.extract.tasks import align_tokens, answer_positions, load_span_dataset, load_token_dataset, \
    read_conll

CONLL = """Empire\tB-LOC
State\tI-LOC
Building\tI-LOC
opens\tO
tonight\tO

John\tB-PER
unbelievably\tO
likes\tO
Zurich\tB-LOC

"""


def write(path, text) -> str:
    path.write_text(text)
    return str(path)


def squad(contexts_qas) -> dict:
    return {"version": "v2.0", "data": [{"title": "t", "paragraphs": [
        {"context": c, "qas": qas} for c, qas in contexts_qas]}]}


def test_read_conll_and_jsonl(tmp_path):
    words, tags = read_conll(write(tmp_path / "a.conll", CONLL))
    assert words[1] == ["John", "unbelievably", "likes", "Zurich"] and tags[0][:3] == ["B-LOC", "I-LOC", "I-LOC"]
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(json.dumps({"tokens": w, "tags": t}) for w, t in zip(words, tags)))
    ds, info = load_token_dataset({"train": str(p)})
    assert info.scheme == "IOB2" and info.tag_names[0] == "O" and "B-PER" in info.tag_names
    assert ds.splits["train"].texts[0] == "Empire State Building opens tonight"


def test_alignment_first_subword():
    # "unbelievably" -> several word pieces; only the first carries the tag
    words = ["John", "unbelievably", "likes"]
    offsets = [(0, 0), (0, 4), (5, 7), (7, 12), (12, 17), (18, 23), (0, 0)]
    al = align_tokens(offsets, [(0, 4), (5, 17), (18, 23)], np.array([1, 0, 2]))
    assert al["word_index"].tolist() == [-1, 0, 1, 1, 1, 2, -1]
    assert al["tags"].tolist() == [-100, 1, 0, -100, -100, 2, -100]
    assert al["char_start"].tolist() == [-1, 0, 5, 7, 12, 18, -1] and al["char_end"][4] == 17
    del words


def test_answer_positions_truncation_unanswerable():
    cs, ce = np.array([-1, -1, 0, 4, 9, -1]), np.array([-1, -1, 3, 8, 12, -1])
    assert answer_positions(cs, ce, [{"text": "quik fox", "answer_start": 4}]) == (3, 4, False)
    assert answer_positions(cs, ce, []) == (0, 0, False)
    assert answer_positions(cs, ce, [{"text": "later", "answer_start": 20}]) == (0, 0, True)


@pytest.mark.parametrize("fmt,name", [("zarr", "st"), ("hdf5", "st.h5")])
def test_token_store(bert, tmp_path, fmt, name):
    data = write(tmp_path / "train.conll", CONLL)
    cfg = ExtractConfig(model=bert, data={"train": data}, out=str(tmp_path / name), task="token", layers="-1",
                        format=fmt, progress=False)
    extract(cfg)
    st = open_store(cfg.out)
    assert st.task == "token" and st.task_info["scheme"] == "IOB2"
    from featstore.verify import format_info, info

    assert "task         token (" in format_info(info(cfg.out)) and "truncated words" in format_info(info(cfg.out))
    sp = st.split("train")
    tags, words = sp.token_targets(), sp.token_array("word_index")
    assert len(tags) == sp.n_tokens == len(words)
    gold = sp.gold()
    names = st.task_info["tag_names"]
    for i in range(sp.n_examples):  # every word's first sub-word carries its tag, in storage order
        a, b = sp.offsets[i], sp.offsets[i + 1]
        w, t = words[a:b], tags[a:b]
        firsts = [k for k in range(len(w)) if w[k] >= 0 and (k == 0 or w[k - 1] != w[k])]
        assert [names[t[k]] for k in firsts] == gold[i]["tags"]
        assert (t[[k for k in range(len(w)) if k not in firsts]] == -100).all()
        text = " ".join(gold[i]["words"])
        cs, ce = sp.token_array("char_start")[a:b], sp.token_array("char_end")[a:b]
        assert text[cs[firsts[0]]:ce[firsts[0]]].lower().startswith(gold[i]["words"][0][:2].lower())


def test_token_truncation_counted(bert, tmp_path):
    data = write(tmp_path / "train.conll", CONLL)
    cfg = ExtractConfig(model=bert, data={"train": data}, out=str(tmp_path / "st"), task="token", layers="-1",
                        max_length=6, progress=False)
    extract(cfg)
    st = open_store(cfg.out)
    assert st.task_info["splits"]["train"]["truncated_words"] > 0
    assert st.manifest["dataset"]["splits"]["train"]["truncated"] >= 1


def test_span_store(bert, tmp_path):
    ctx = "The quick brown fox jumps over the lazy dog near the river bank."
    doc = squad([(ctx, [
        {"id": "q1", "question": "Who jumps?", "answers": [{"text": "quick brown fox", "answer_start": 4},
                                                            {"text": "fox", "answer_start": 16}]},
        {"id": "q2", "question": "Where?", "answers": [{"text": "river bank", "answer_start": 53}]},
        {"id": "q3", "question": "Why?", "answers": [], "is_impossible": True}])])
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(doc))
    cfg = ExtractConfig(model=bert, data={"train": str(path)}, out=str(tmp_path / "st"), task="span", layers="-1",
                        max_length=16, progress=False)
    extract(cfg)
    st = open_store(cfg.out)
    sp = st.split("train")
    assert st.manifest["settings"]["truncation"] == "only_second"
    pos, gold, ids = sp.span_targets(), sp.gold(), sp.example_ids
    cs, ce = sp.token_array("char_start"), sp.token_array("char_end")
    byid = {i: k for k, i in enumerate(ids)}
    k = byid["q1"]
    a = sp.offsets[k]
    s, e = pos[k]
    assert ctx[cs[a + s]:ce[a + e]] == "quick brown fox"
    assert gold[k]["answers"] == ["quick brown fox", "fox"]
    assert pos[byid["q3"]].tolist() == [0, 0] and gold[byid["q3"]]["answers"] == []
    assert pos[byid["q2"]].tolist() == [0, 0]  # "river bank" is past 16 tokens: lost to truncation
    assert st.task_info["splits"]["train"] == {"answers_lost": 1, "unanswerable": 1}


def _cli(args):
    return CliRunner().invoke(main, args)


def _one_line_exit2(result, *fragments):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for f in fragments:
        assert f in err, err


def test_bad_tags_one_line(bert, tmp_path):
    data = write(tmp_path / "bad.conll", "Paris\tI-LOC\nis\tO\n\n")
    out = tmp_path / "st"
    r = _cli(["extract", "--model", bert, "--task", "token", "--data", f"train={data}", "--out", str(out), "--quiet"])
    _one_line_exit2(r, "I-LOC", "--repair-tags")
    assert not out.exists()
    r = _cli(["extract", "--model", bert, "--task", "token", "--data", f"train={data}", "--out", str(out), "--quiet",
              "--repair-tags", "--layers", "-1"])
    assert r.exit_code == 0, r.output
    assert open_store(str(out)).split("train").gold()[0]["tags"] == ["B-LOC", "O"]
    assert "train: 0 truncated words" in r.output


def test_bad_offsets_one_line(bert, tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"id": "a", "context": "Berlin is big.", "question": "What?",
                             "answers": {"text": ["Berlin"], "answer_start": [3]}}) + "\n")
    out = tmp_path / "st"
    r = _cli(["extract", "--model", bert, "--task", "span", "--data", f"train={p}", "--out", str(out), "--quiet"])
    _one_line_exit2(r, "'Berlin' is not at character 3", "--repair-answers")
    assert not out.exists()
    r = _cli(["extract", "--model", bert, "--task", "span", "--data", f"train={p}", "--out", str(out), "--quiet",
              "--repair-answers", "--layers", "-1"])
    assert r.exit_code == 0, r.output
    st = open_store(str(out))
    assert st.task_info["repaired"] == 1 and st.split("train").span_targets()[0, 0] > 0


def test_span_jsonl_and_plain_tags(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"id": "a", "context": "Berlin is big.", "question": "What?",
                             "answers": {"text": ["Berlin"], "answer_start": [0]}}) + "\n")
    ds, info = load_span_dataset({"train": str(p)})
    assert ds.splits["train"].extra["answers"][0] == [{"text": "Berlin", "answer_start": 0}]
    pos = write(tmp_path / "pos.conll", "The DT\ncat NN\nsat VBD\n\n")
    ds, info = load_token_dataset({"train": pos})
    assert info.scheme == "none" and info.tag_names == ["DT", "NN", "VBD"]


def test_manifest_task_validated(bert, tmp_path):
    from featstore.errors import StoreError
    from featstore.store.manifest import validate

    data = write(tmp_path / "train.conll", CONLL)
    cfg = ExtractConfig(model=bert, data={"train": data}, out=str(tmp_path / "st"), task="token", layers="-1",
                        progress=False)
    extract(cfg)
    m = json.loads((tmp_path / "st" / "manifest.json").read_text())
    m["dataset"]["task"]["kind"] = "span"
    with pytest.raises(StoreError, match="inconsistent"):
        validate(m, "x")


def test_add_token_labels(bert, tmp_path):
    from featstore.labels import add_labels
    from heads import TrainConfig, train
    from featstore.errors import InputError

    data = write(tmp_path / "train.conll", CONLL)
    out = str(tmp_path / "st")
    extract(ExtractConfig(model=bert, data={"train": data}, out=out, task="token", layers="-1", progress=False))
    fp = open_store(out).fingerprint
    pos = tmp_path / "pos.jsonl"
    pos.write_text(json.dumps({"id": "train-0", "pos": ["NNP", "NNP", "NNP", "VBZ", "NN"]}) + "\n"
                   + json.dumps({"id": "train-1", "pos": ["NNP", "RB", "VBZ", "NNP"]}) + "\n")
    r = add_labels(out, {"train": str(pos)}, "pos")
    assert r.kind == "token" and r.names == ["NN", "NNP", "RB", "VBZ"] and r.fingerprint == fp
    st = open_store(out)
    sp = st.split("train")
    assert st.task_info["tag_columns"]["pos"]["scheme"] == "none"
    t, w = sp.token_targets("pos"), sp.token_array("word_index")
    k = sp.example_ids.index("train-1")
    a, b = sp.offsets[k], sp.offsets[k + 1]
    first = [i for i in range(a, b) if w[i] >= 0 and (i == a or w[i - 1] != w[i])]
    assert [r.names[t[i]] for i in first] == ["NNP", "RB", "VBZ", "NNP"]
    assert sp.gold_tags("pos")[k] == ["NNP", "RB", "VBZ", "NNP"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "train-0", "x": ["NN"]}) + "\n" + json.dumps({"id": "train-1", "x": ["NN"]}))
    with pytest.raises(InputError, match="1 tags for [45] words"):
        add_labels(out, {"train": str(bad)}, "x")
    res = train(TrainConfig("linear", store=out, label_column="pos", out=str(tmp_path / "run"), dev_split="none",
                            test_split="none", epochs=1, progress=False))
    assert res.label_column == "pos" and res.primary_metric == "accuracy"
