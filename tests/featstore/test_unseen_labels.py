"""Labels that only dev/test have: kept in the vocabulary, counted, warned about; `--strict-labels` refuses them."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli.featstore_cli import main
from featstore import open_store

TRAIN = "John\tB-PER\nlikes\tO\nZurich\tB-LOC\n\nMary\tB-PER\nsleeps\tO\n\n"
TEST = "Anna\tB-PER\nbuys\tO\n$\tSYM\n5\tB-NUM\n\nBob\tB-PER\n$\tSYM\n\n"


def write(path, text) -> str:
    path.write_text(text)
    return str(path)


def cli(*args):
    return CliRunner().invoke(main, list(args))


def one_line(text: str, prefix: str) -> str:
    lines = [x for x in text.splitlines() if x.startswith(prefix)]
    assert len(lines) == 1, text
    return lines[0]


def token_extract(bert, tmp_path, *extra):
    train, test = write(tmp_path / "train.conll", TRAIN), write(tmp_path / "test.conll", TEST)
    out = str(tmp_path / "st")
    r = cli("extract", "--model", bert, "--task", "token", "--data", f"train={train}", "--data", f"test={test}",
            "--layers", "-1", "--out", out, "--quiet", *extra)
    return r, out


def test_token_tag_absent_from_train_is_kept_and_counted(bert, tmp_path):
    r, out = token_extract(bert, tmp_path)
    assert r.exit_code == 0, r.output
    warning = one_line(r.stderr, "warning:")
    assert "'SYM' (test 2)" in warning and "'B-NUM' (test 1)" in warning and "--strict-labels" in warning
    st = open_store(out)
    names = st.task_info["tag_names"]
    assert names == ["O", "B-LOC", "B-PER", "B-NUM", "SYM"]  # train's tags first, in the order they always had
    assert st.task_info["unseen_in_train"] == {"B-NUM": {"test": 1}, "SYM": {"test": 2}}
    sp = st.split("test")
    gold = sp.gold()
    tags, words = sp.token_targets(), sp.token_array("word_index")
    for i in range(sp.n_examples):  # the unseen tags are stored like any other, on each word's first sub-word
        a, b = sp.offsets[i], sp.offsets[i + 1]
        w = words[a:b]
        firsts = [k for k in range(len(w)) if w[k] >= 0 and (k == 0 or w[k - 1] != w[k])]
        assert [names[tags[a + k]] for k in firsts] == gold[i]["tags"]
    from featstore.verify import format_info, info

    assert "not in train: 'B-NUM' (test 1), 'SYM' (test 2)" in format_info(info(out))
    r = cli("extract", "--model", bert, "--task", "token", "--data", f"train={tmp_path / 'train.conll'}",
            "--data", f"test={tmp_path / 'test.conll'}", "--layers", "-1", "--out", str(tmp_path / "st2"), "--quiet",
            "--json")
    assert json.loads(r.stdout)["unseen_labels"] == {"tags": {"B-NUM": {"test": 1}, "SYM": {"test": 2}}}


def test_token_store_without_unseen_tags_keeps_its_manifest(bert, tmp_path):
    train = write(tmp_path / "train.conll", TRAIN)
    out = str(tmp_path / "st")
    r = cli("extract", "--model", bert, "--task", "token", "--data", f"train={train}", "--data", f"test={train}",
            "--layers", "-1", "--out", out, "--quiet")
    assert r.exit_code == 0 and "warning" not in r.stderr, r.output
    assert "unseen_in_train" not in open_store(out).task_info


def test_strict_labels_refuses_token_tags(bert, tmp_path):
    r, out = token_extract(bert, tmp_path, "--strict-labels")
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "'test'" in err and "sentence 0: tag 'SYM'" in err and "does not occur in the training" in err
    assert not (tmp_path / "st").exists()


def sentence_rows(labels):
    return "".join(json.dumps({"id": f"r{i}", "text": f"text number {i}", "label": v}) + "\n"
                   for i, v in enumerate(labels))


def test_sentence_class_absent_from_train(bert, tmp_path):
    train = write(tmp_path / "train.jsonl", sentence_rows(["pos", "neg", "pos"]))
    test = write(tmp_path / "test.jsonl", sentence_rows(["neg", "neutral", "neutral", "pos"]))
    out = str(tmp_path / "st")
    args = ["extract", "--model", bert, "--data", f"train={train}", "--data", f"test={test}", "--label-column",
            "label", "--layers", "-1", "--out", out, "--quiet"]
    r = cli(*args, "--strict-labels")
    assert r.exit_code == 2 and "row 1: label in column 'label' 'neutral' does not occur" in r.stderr, r.output
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "'neutral' (test 2)" in one_line(r.stderr, "warning:")
    st = open_store(out)
    col = st.label_columns["label"]
    assert col["names"] == ["neg", "pos", "neutral"] and col["unseen_in_train"] == {"neutral": {"test": 2}}
    sp = st.split("test")
    y = sp.targets("label")[sp.input_order()]
    assert [col["names"][k] for k in y] == ["neg", "neutral", "neutral", "pos"]


def test_add_labels_keeps_unseen_classes_and_tags(bert, tmp_path):
    train, test = write(tmp_path / "train.conll", TRAIN), write(tmp_path / "test.conll", TRAIN)
    out = str(tmp_path / "st")
    assert cli("extract", "--model", bert, "--task", "token", "--data", f"train={train}", "--data", f"test={test}",
               "--layers", "-1", "--out", out, "--quiet").exit_code == 0
    pos = {"train": [["NNP", "VBZ", "NNP"], ["NNP", "VBZ"]], "test": [["NNP", "VBZ", "SYM"], ["NNP", "VBZ"]]}
    files = {}
    for split, seqs in pos.items():
        files[split] = write(tmp_path / f"pos-{split}.jsonl", "".join(
            json.dumps({"id": f"{split}-{i}", "pos": t}) + "\n" for i, t in enumerate(seqs)))
    data = [x for split, p in files.items() for x in ("--data", f"{split}={p}")]
    r = cli("add-labels", out, *data, "--label-column", "pos", "--strict-labels")
    assert r.exit_code == 2 and "id 'test-0': tag 'SYM' does not occur" in r.stderr, r.output
    assert "pos" not in open_store(out).task_info.get("tag_columns", {})
    r = cli("add-labels", out, *data, "--label-column", "pos")
    assert r.exit_code == 0, r.output
    assert "'SYM' (test 1)" in one_line(r.stderr, "warning:")
    st = open_store(out)
    entry = st.task_info["tag_columns"]["pos"]
    assert entry["tag_names"] == ["NNP", "VBZ", "SYM"] and entry["unseen_in_train"] == {"SYM": {"test": 1}}
    assert st.split("test").gold_tags("pos")[st.split("test").example_ids.index("test-0")] == ["NNP", "VBZ", "SYM"]
    # a sentence label column on a sentence store: the same policy
    s_train = write(tmp_path / "s-train.jsonl", sentence_rows(["a", "b"]))
    s_test = write(tmp_path / "s-test.jsonl", sentence_rows(["a", "c"]))
    s_out = str(tmp_path / "s")
    assert cli("extract", "--model", bert, "--data", f"train={s_train}", "--data", f"test={s_test}", "--id-column",
               "id", "--layers", "-1", "--out", s_out, "--quiet").exit_code == 0
    from featstore.errors import InputError
    from featstore.labels import add_labels

    with pytest.raises(InputError, match="row 1: label in column 'label' 'c' does not occur in the training split"):
        add_labels(s_out, {"train": s_train, "test": s_test}, "label", strict_labels=True)
    res = add_labels(s_out, {"train": s_train, "test": s_test}, "label")
    assert res.names == ["a", "b", "c"] and res.unseen == {"c": {"test": 1}}
    assert open_store(s_out).label_columns["label"]["unseen_in_train"] == {"c": {"test": 1}}


def test_malformed_unseen_in_manifest_refused(bert, tmp_path):
    from featstore.errors import StoreError
    from featstore.store.manifest import validate

    r, out = token_extract(bert, tmp_path)
    assert r.exit_code == 0
    m = json.loads((tmp_path / "st" / "manifest.json").read_text())
    validate(m, "x")
    m["dataset"]["task"]["unseen_in_train"] = {"NOT-A-TAG": {"test": 1}}
    with pytest.raises(StoreError, match="unseen_in_train is malformed"):
        validate(m, "x")
    m["dataset"]["task"]["unseen_in_train"] = {"SYM": {"test": "many"}}
    with pytest.raises(StoreError, match="unseen_in_train is malformed"):
        validate(m, "x")
