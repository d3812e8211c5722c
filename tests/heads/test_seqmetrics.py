"""Token and span metrics against hand-computed values, seqeval's edge cases included."""
from __future__ import annotations

import pytest

from featstore.tagging import detect_scheme, invalid_tags, repair_tags
from heads.metrics import entities, entity_prf, normalize_answer, squad_metrics, token_metrics, word_accuracy


def test_scheme_detection():
    assert detect_scheme([["B-PER", "I-PER", "O"]]) == "IOB2"
    assert detect_scheme([["S-PER", "O", "B-LOC", "E-LOC"]]) == "IOBES"
    assert detect_scheme([["NN", "VB", "DT"]]) == "none"
    assert detect_scheme([["O", "O"]]) == "none"


def test_strict_vs_default_i_without_b():
    seq = ["I-PER", "I-PER", "O", "B-LOC"]
    assert entities(seq, "IOB2", "strict") == [("LOC", 3, 3)]
    assert entities(seq, "IOB2", "default") == [("PER", 0, 1), ("LOC", 3, 3)]


def test_type_change_inside_entity():
    seq = ["B-PER", "I-LOC", "I-LOC"]
    assert entities(seq, "IOB2", "strict") == [("PER", 0, 0)]
    assert entities(seq, "IOB2", "default") == [("PER", 0, 0), ("LOC", 1, 2)]


def test_iobes():
    seq = ["S-PER", "B-LOC", "I-LOC", "E-LOC", "B-ORG", "O", "E-MISC"]
    assert entities(seq, "IOBES", "strict") == [("PER", 0, 0), ("LOC", 1, 3)]  # B-ORG never ends, E-MISC alone
    assert entities(seq, "IOBES", "default") == [("PER", 0, 0), ("LOC", 1, 3), ("ORG", 4, 4), ("MISC", 6, 6)]


def test_entity_prf_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O"]]
    # strict: pred entities PER(0,1), ORG(3,3) (I-ORG invalid); gold PER, LOC, ORG -> 1 right of 2 / 3
    s = entity_prf(gold, pred, "IOB2", "strict")
    assert s["precision"] == pytest.approx(1 / 2) and s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    # default: I-ORG starts ORG(0,0) -> 2 right of 3 predicted / 3 gold
    d = entity_prf(gold, pred, "IOB2", "default")
    assert d["precision"] == pytest.approx(2 / 3) and d["f1"] == pytest.approx(2 / 3)
    assert word_accuracy(gold, pred) == pytest.approx(4 / 6)
    m = token_metrics(gold, pred, "IOB2")
    assert m["f1"] == pytest.approx(s["f1"]) and m["f1_conlleval"] == pytest.approx(2 / 3)
    assert set(token_metrics([["NN"]], [["VB"]], "none")) == {"accuracy"}


def test_no_entities_is_zero():
    assert entity_prf([["O"]], [["O"]])["f1"] == 0.0


def test_invalid_and_repair():
    tags = ["O", "I-PER", "I-PER", "B-LOC", "I-ORG"]
    assert invalid_tags(tags, "IOB2") == [1, 4]
    assert repair_tags(tags, "IOB2") == ["O", "B-PER", "I-PER", "B-LOC", "B-ORG"]
    assert repair_tags(["E-PER"], "IOBES") == ["S-PER"]
    assert invalid_tags(["NN", "VB"], "none") == []


def test_squad():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    m = squad_metrics(["the Eiffel tower", "Paris France", ""], [["Eiffel Tower", "tower"], ["Paris"], []])
    # EM: 1, 0, 1 (empty vs unanswerable); F1: 1, 2*(1/2*1)/(1.5)=2/3, 1
    assert m["exact_match"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert squad_metrics(["x"], [[]])["f1"] == 0.0
