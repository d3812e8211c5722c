"""Per-question answers from per-window start/end scores (`featstore.spans`)."""
from __future__ import annotations

import numpy as np
import pytest

from featstore.spans import best_answers, window_candidates

# A context of 10 tokens "t0 ... t9", token j at characters [3j, 3j + 2). Window 0 holds tokens 0..5, window 1
# tokens 4..9 (overlap: tokens 4, 5). Each window: [CLS] + its context tokens.
WINDOWS = [list(range(0, 6)), list(range(4, 10))]


def layout(windows=WINDOWS):
    cs = [np.array([-1] + [3 * j for j in w]) for w in windows]
    ce = [np.array([-1] + [3 * j + 2 for j in w]) for w in windows]
    allowed = [c >= 0 for c in cs]
    return cs, ce, allowed


def scores(window, start_at=None, end_at=None, base=0.0):
    """Scores of one window: `base` everywhere, {context token j: score} added where given."""
    n = len(WINDOWS[window]) + 1
    s, e = np.full(n, base), np.full(n, base)
    for d, arr in ((start_at or {}), s), ((end_at or {}), e):
        for j, v in d.items():
            arr[1 + WINDOWS[window].index(j)] = v
    return s, e


def test_best_span_across_windows():
    cs, ce, allowed = layout()
    s0, e0 = scores(0, {1: 2.0}, {2: 2.0})  # window 0: tokens 1..2, score 4
    s1, e1 = scores(1, {7: 3.0}, {8: 3.0})  # window 1: tokens 7..8, score 6: the best over both windows
    (qa,) = best_answers([s0, s1], [e0, e1], allowed, cs, ce, np.array([0, 0]))
    assert qa.best.score == 6.0 and qa.best.window == 1
    assert (qa.best.char_start, qa.best.char_end) == (21, 26)  # t7 .. t8


def test_only_valid_spans():
    cs, ce, allowed = layout()
    s, e = scores(0, {3: 1.0, 1: 0.5}, {2: 1.0, 1: 0.5})
    s[0] = e[0] = 50.0  # [CLS] is not context
    (qa,) = best_answers([s], [e], [allowed[0]], [cs[0]], [ce[0]], np.array([0]))
    assert (qa.best.start, qa.best.end) == (2, 3)  # tokens 1..2 (0.5 + 1.0); 3..2 would end before it starts
    assert qa.null_score == 100.0
    s, e = scores(0, {0: 5.0}, {5: 5.0})
    (qa,) = best_answers([s], [e], [allowed[0]], [cs[0]], [ce[0]], np.array([0]), max_answer=3)
    assert qa.best.end - qa.best.start < 3  # the 6-token span is too long


def test_answer_in_overlap_counted_once():
    cs, ce, allowed = layout()
    # both windows find tokens 4..5 (in the overlap), with different scores; the second-best answer differs
    s0, e0 = scores(0, {4: 3.0, 1: 1.0}, {5: 3.0, 1: 1.0})
    s1, e1 = scores(1, {4: 4.0, 8: 1.5}, {5: 4.0, 8: 1.5})
    s0[0], e0[0], s1[0], e1[0] = 1.0, 1.0, 0.5, 0.0
    (qa,) = best_answers([s0, s1], [e0, e1], allowed, cs, ce, np.array([3, 3]), n_best=3)
    chars = [(x.char_start, x.char_end) for x in qa.spans]
    assert chars[0] == (12, 17) and chars.count((12, 17)) == 1  # once, with window 1's higher score
    assert qa.spans[0].score == 8.0 and qa.spans[0].window == 1
    assert len(set(chars)) == len(chars) == 3
    assert qa.question == 3 and qa.null_score == 0.5  # the lowest [CLS] score over the windows (HF)


def test_questions_grouped_and_ordered():
    cs, ce, allowed = layout()
    s0, e0 = scores(0, {1: 1.0}, {1: 1.0})
    s1, e1 = scores(1, {9: 1.0}, {9: 1.0})
    res = best_answers([s1, s0, s1], [e1, e0, e1], [allowed[1], allowed[0], allowed[1]], [cs[1], cs[0], cs[1]],
                       [ce[1], ce[0], ce[1]], np.array([7, 2, 7]))
    assert [r.question for r in res] == [2, 7]
    assert (res[0].best.char_start, res[1].best.char_start) == (3, 27)
    assert len(res[1].spans) == 1  # question 7's two identical windows give one answer
    with pytest.raises(ValueError, match="one entry per window"):
        best_answers([s0], [e0], allowed, cs, ce, np.array([0]))


def test_window_candidates_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        T = int(rng.integers(1, 12))
        s, e, ok = rng.normal(size=T), rng.normal(size=T), rng.random(T) > 0.3
        want = sorted(((s[i] + e[j], i, j) for i in range(T) for j in range(i, min(T, i + 4)) if ok[i] and ok[j]),
                      key=lambda x: (-x[0], x[1]))[:5]
        got = window_candidates(s, e, ok, max_answer=4, k=5)
        assert [(a, b) for _, a, b in got] == [(a, b) for _, a, b in want]
        assert np.allclose([x[0] for x in got], [x[0] for x in want])
