"""Token tasks (NER, POS, chunking) and span tasks (extractive QA): read, validate, align to sub-words.

Token inputs: CoNLL-style files (word ... tag per line, blank line between sentences) or JSONL/Parquet with list
columns. Span inputs: SQuAD JSON (v1.1, v2 with unanswerable questions) or flat JSONL (context, question,
answers with character offsets). Both become a `SplitData` whose texts are what the tokenizer sees (the words
joined by spaces; question + context as a pair) plus `extra` per example, and a `TaskInfo` for the manifest.

Alignment: every token records the word it belongs to and its character span; a word's tag sits on its first
sub-word, the others are ignored in the loss (-100). Span answers become start/end token positions; answers
cut off by truncation and unanswerable questions point at position 0 (the [CLS] token), as in SQuAD v2. With
`--stride`, long contexts become overlapping windows instead, each window an example (`tokenize_windows`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..tagging import SCHEMES, detect_scheme, invalid_tags, repair_tags
from .inputs import Dataset, SplitData, read_table, vocabulary
from .plan import Tokenized

TASKS = ("sentence", "token", "span")
IGNORE = -100


@dataclass
class TaskInfo:
    """What the manifest records about a token/span task (`dataset.task`)."""

    kind: str  # token | span
    scheme: str | None = None  # token: IOB2 | IOBES | none
    tag_names: list[str] | None = None  # token: vocabulary, index = tag id
    repaired: int = 0  # tags changed by --repair-tags / answers moved by --repair-answers
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # per split alignment counts
    unseen: dict[str, dict[str, int]] = field(default_factory=dict)  # token: tag -> split -> words; not in train

    def to_json(self) -> dict[str, Any]:
        d = {"kind": self.kind, "splits": self.splits}
        d["repaired"] = self.repaired
        if self.kind == "token":
            d.update(scheme=self.scheme, tag_names=self.tag_names)
        if self.unseen:  # stores without such tags keep the manifest they always had
            d["unseen_in_train"] = self.unseen
        return d


# -- reading -----------------------------------------------------------------------------------------------

def read_conll(path: str) -> tuple[list[list[str]], list[list[str]]]:
    """Words and tags: first and last whitespace-separated column; blank lines end sentences."""
    words, tags, w, t = [], [], [], []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts or parts[0] == "-DOCSTART-":
                    if w:
                        words.append(w)
                        tags.append(t)
                    w, t = [], []
                    continue
                if len(parts) < 2:
                    raise InputError(f"{path}:{lineno}: one column; a CoNLL line is `word<TAB>tag`")
                w.append(parts[0])
                t.append(parts[-1])
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8")
    if w:
        words.append(w)
        tags.append(t)
    return words, tags


def _token_split(name: str, path: str, tokens_column: str, tags_column: str,
                 id_column: str | None) -> tuple[list[list[str]], list[list[str]], list[str]]:
    if not os.path.exists(path):
        raise InputError(f"input file not found: {path}")
    ext = path.lower().rsplit(".", 1)[-1]
    if ext in ("jsonl", "json", "ndjson", "parquet", "pq") or os.path.isdir(path):
        cols = read_table(path)
        for c in (tokens_column, tags_column):
            if c not in cols:
                raise InputError(f"split {name!r} ({path}): column {c!r} not found; columns are {sorted(cols)} "
                                 "(use --tokens-column / --tags-column)")
        words, tags = cols[tokens_column], cols[tags_column]
        for i, (w, t) in enumerate(zip(words, tags)):
            if not isinstance(w, list) or not isinstance(t, list) or not all(isinstance(x, str) for x in w + t):
                raise InputError(f"split {name!r} ({path}) row {i}: {tokens_column!r} and {tags_column!r} must "
                                 "be lists of strings")
        ids = [str(v) for v in cols[id_column]] if id_column and id_column in cols else None
    else:
        words, tags = read_conll(path)
        ids = None
    for i, (w, t) in enumerate(zip(words, tags)):
        if len(w) != len(t):
            raise InputError(f"split {name!r} ({path}) sentence {i}: {len(w)} words but {len(t)} tags")
        if not w:
            raise InputError(f"split {name!r} ({path}) sentence {i} is empty; drop it")
    return words, tags, ids or [f"{name}-{i}" for i in range(len(words))]


def tag_order(tag: str) -> tuple[bool, str]:
    """`O` first, then alphabetical: the order of a tag vocabulary."""
    return tag != "O", tag


def load_token_dataset(data: dict[str, str], tokens_column: str = "tokens", tags_column: str = "tags",
                       id_column: str | None = None, scheme: str = "auto",
                       repair: bool = False, strict_labels: bool = False) -> tuple[Dataset, TaskInfo]:
    """Read and validate token splits; an I- tag without its B- is an error unless `repair`. A tag absent from
    the training split is kept (after train's tags) and counted, or refused with `strict_labels`."""
    read = {n: _token_split(n, p, tokens_column, tags_column, id_column) for n, p in data.items()}
    all_tags = [t for _, tags, _ in read.values() for t in tags]
    if scheme == "auto":
        scheme = detect_scheme(all_tags)
    elif scheme not in SCHEMES:
        raise InputError(f"--tag-scheme {scheme!r}: use auto, IOB2 (= BIO), IOBES or none")
    repaired = 0
    splits = {}
    for name, (words, tags, ids) in read.items():
        for i, t in enumerate(tags):
            bad = invalid_tags(t, scheme)
            if bad and not repair:
                raise InputError(f"split {name!r} ({data[name]}) sentence {i} word {bad[0]}: tag {t[bad[0]]!r} "
                                 f"continues an entity that never started ({scheme}); fix the data or pass "
                                 "--repair-tags to start such entities there")
            if bad:
                tags[i] = repair_tags(t, scheme)
                repaired += len(bad)
        s = SplitData(name, data[name], [" ".join(w) for w in words], None, ids)
        s.extra = {"words": words, "tags": tags}
        splits[name] = s
    names, unseen = vocabulary({n: s.extra["tags"] for n, s in splits.items()}, tag_order, strict_labels, "tag",
                               lambda split, i: f"split {split!r} ({data[split]}) sentence {i}")
    index = {n: i for i, n in enumerate(names)}
    for s in splits.values():
        s.extra["tag_ids"] = [np.asarray([index[t] for t in seq], dtype=np.int64) for seq in s.extra["tags"]]
    return (Dataset(splits, [], tokens_column, None, id_column),
            TaskInfo("token", scheme, names, repaired, unseen=unseen))


def _answers(raw: Any, where: str) -> list[dict[str, Any]]:
    """SQuAD's list of {text, answer_start} or HF's {text: [...], answer_start: [...]}."""
    if isinstance(raw, dict):
        raw = [{"text": t, "answer_start": s} for t, s in zip(raw.get("text", []), raw.get("answer_start", []))]
    if not isinstance(raw, list) or not all(isinstance(a, dict) and isinstance(a.get("text"), str)
                                            and isinstance(a.get("answer_start"), int) for a in raw):
        raise InputError(f"{where}: answers must be a list of {{text, answer_start}} (or {{text: [...], "
                         "answer_start: [...]}})")
    return raw


def _span_rows(name: str, path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        raise InputError(f"input file not found: {path}")
    rows = []
    if path.lower().endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            for art in doc["data"]:
                for par in art["paragraphs"]:
                    for qa in par["qas"]:
                        ans = [] if qa.get("is_impossible") else qa["answers"]
                        rows.append({"id": str(qa["id"]), "context": par["context"], "question": qa["question"],
                                     "answers": ans})
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"split {name!r} ({path}) is not SQuAD JSON ({type(e).__name__}: {e}); expected "
                             '{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}')
    else:
        cols = read_table(path)
        for c in ("context", "question", "answers"):
            if c not in cols:
                raise InputError(f"split {name!r} ({path}): column {c!r} not found; columns are {sorted(cols)}")
        ids = cols.get("id") or [f"{name}-{i}" for i in range(len(cols["context"]))]
        rows = [{"id": str(i), "context": c, "question": q, "answers": a}
                for i, c, q, a in zip(ids, cols["context"], cols["question"], cols["answers"])]
    return rows


def _nearest(context: str, text: str, start: int) -> int | None:
    """Start of the occurrence of `text` in `context` closest to `start`, or None."""
    found, i = [], context.find(text)
    while i >= 0:
        found.append(i)
        i = context.find(text, i + 1)
    return min(found, key=lambda j: abs(j - start)) if found else None


def load_span_dataset(data: dict[str, str], repair: bool = False) -> tuple[Dataset, TaskInfo]:
    """Read and validate span splits; an answer whose text is not at its offsets is an error, unless `repair`
    moves it to the nearest place its text occurs (SQuAD's own dev set has a few answers off by some characters)."""
    splits, repaired = {}, 0
    for name, path in data.items():
        rows = _span_rows(name, path)
        if not rows:
            raise InputError(f"split {name!r} ({path}) is empty: give a file with at least one question")
        seen: set[str] = set()
        for i, r in enumerate(rows):
            where = f"split {name!r} ({path}) question {r['id']!r}"
            if not isinstance(r["context"], str) or not isinstance(r["question"], str) or not r["context"].strip():
                raise InputError(f"{where}: context and question must be non-empty text")
            if r["id"] in seen:
                raise InputError(f"{where}: duplicate id; ids must be unique")
            seen.add(r["id"])
            r["answers"] = _answers(r["answers"], where)
            for a in r["answers"]:
                got = r["context"][a["answer_start"]:a["answer_start"] + len(a["text"])]
                fixed = _nearest(r["context"], a["text"], a["answer_start"]) if repair and a["text"] else None
                if (got != a["text"] or a["answer_start"] < 0) and fixed is not None:
                    a["answer_start"], repaired = fixed, repaired + 1
                elif got != a["text"] or a["answer_start"] < 0:
                    raise InputError(f"{where}: answer {a['text'][:40]!r} is not at character {a['answer_start']} "
                                     f"of its context (found {got[:40]!r}); fix answer_start, or pass --repair-answers to "
                                     "move it to where its text occurs")
        s = SplitData(name, path, [r["question"] for r in rows], [r["context"] for r in rows],
                      [r["id"] for r in rows])
        s.extra = {"answers": [r["answers"] for r in rows]}
        splits[name] = s
    return Dataset(splits, [], "question", "context", "id"), TaskInfo("span", repaired=repaired)


# -- alignment ---------------------------------------------------------------------------------------------

def _word_spans(words: list[str]) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for w in words:
        spans.append((pos, pos + len(w)))
        pos += len(w) + 1
    return spans


def align_tokens(offsets: list[tuple[int, int]], word_spans: list[tuple[int, int]], tag_ids: np.ndarray | None,
                 keep: list[bool] | None = None) -> dict[str, np.ndarray]:
    """Per token: word index (-1 for special tokens), char start/end (-1 likewise), tag on first sub-words."""
    starts = np.asarray([s for s, _ in word_spans], dtype=np.int64)
    n = len(offsets)
    word = np.full(n, -1, dtype=np.int32)
    cs, ce = np.full(n, -1, dtype=np.int32), np.full(n, -1, dtype=np.int32)
    tags = np.full(n, IGNORE, dtype=np.int64)
    seen = set()
    for t, (a, b) in enumerate(offsets):
        if b <= a or (keep is not None and not keep[t]):
            continue  # special tokens, padding, the other sequence of a pair
        w = int(np.searchsorted(starts, a, side="right") - 1)
        word[t], cs[t], ce[t] = w, a, b
        if w not in seen:
            seen.add(w)
            if tag_ids is not None:
                tags[t] = tag_ids[w]
    return {"word_index": word, "char_start": cs, "char_end": ce, "tags": tags}


def answer_positions(cs: np.ndarray, ce: np.ndarray, answers: list[dict[str, Any]]) -> tuple[int, int, bool]:
    """(start token, end token, lost to truncation) of the first answer; (0, 0) when there is none."""
    if not answers:
        return 0, 0, False
    a = answers[0]["answer_start"]
    b = a + len(answers[0]["text"])
    ctx = np.flatnonzero(cs >= 0)
    if len(ctx) == 0 or ce[ctx[-1]] < b or cs[ctx[0]] > a:
        return 0, 0, True
    start = int(ctx[np.argmax(ce[ctx] > a)])
    end = int(ctx[len(ctx) - 1 - np.argmax(cs[ctx][::-1] < b)])
    return start, end, False


def tokenize_task(tokenizer, split: SplitData, info: TaskInfo, max_length: int, truncation: str,
                  stride: int | None = None) -> Tokenized:
    """Tokenize with offsets and align tags / answers; records counts in `info.splits`.

    Span tasks with `stride`: every question becomes one example per window of its context (see
    `tokenize_windows`), and `split` is rewritten to hold those windows."""
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("token and span tasks need a fast tokenizer (character offsets); this model has none")
    if info.kind == "span" and stride:
        return tokenize_windows(tokenizer, split, info, max_length, stride)
    ids, types, extra = [], [], {k: [] for k in ("word_index", "char_start", "char_end")}
    targets, lost_words, lost_answers, unanswerable, truncated = [], 0, 0, 0, 0
    for i in range(len(split)):
        if info.kind == "token":
            enc = tokenizer(split.texts[i], truncation=True, max_length=max_length, return_offsets_mapping=True,
                            verbose=False)
            words = split.extra["words"][i]
            al = align_tokens(enc["offset_mapping"], _word_spans(words), split.extra["tag_ids"][i])
            n_words = len(set(al["word_index"][al["word_index"] >= 0].tolist()))
            lost_words += len(words) - n_words
            truncated += n_words < len(words)
            targets.append(al["tags"])
        else:
            enc = tokenizer(split.texts[i], split.pairs[i], truncation=truncation, max_length=max_length,
                            return_offsets_mapping=True, verbose=False)
            keep = [s == 1 for s in enc.sequence_ids()]
            ctx = split.pairs[i].split(" ")
            al = align_tokens(enc["offset_mapping"], _word_spans(ctx), None, keep)
            s, e, lost = answer_positions(al["char_start"], al["char_end"], split.extra["answers"][i])
            lost_answers += lost
            unanswerable += not split.extra["answers"][i]
            truncated += int(al["char_end"].max(initial=-1)) < len(split.pairs[i].rstrip())
            targets.append(np.asarray([s, e], dtype=np.int64))
        ids.append(enc["input_ids"])
        if "token_type_ids" in enc:
            types.append(enc["token_type_ids"])
        for k in extra:
            extra[k].append(al[k])
    info.splits[split.name] = ({"truncated_words": lost_words} if info.kind == "token" else
                               {"answers_lost": lost_answers, "unanswerable": unanswerable})
    split.extra["targets"] = targets
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    return Tokenized(ids, types if len(types) == len(ids) else None, lengths, truncated, extra=extra)


def tokenize_windows(tokenizer, split: SplitData, info: TaskInfo, max_length: int, stride: int) -> Tokenized:
    """Span task, long contexts: overlapping windows of question + context (HF's `doc_stride`: consecutive
    windows of a question share `stride` context tokens), each window one example.

    Rewrites `split` to one entry per window, in question order: ids `QID#k`, the question's texts and answers,
    and in `extra` per window `question` (the question's input row), `window` (k) and `answer_in_window` (1 when
    the window holds the whole first answer: its start/end target; else 0 and the no-answer target (0, 0), the
    [CLS] token, as in HF). An answer in the overlap of two windows is a target in both. Nothing is truncated: a
    window is cut only where the next one starts."""
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    ids, types, extra = [], [], {k: [] for k in ("word_index", "char_start", "char_end")}
    targets, question, window, in_window = [], [], [], []
    lost_answers = unanswerable = windowed = 0
    for i in range(len(split)):
        n_q = len(tokenizer(split.texts[i], add_special_tokens=False, verbose=False)["input_ids"])
        room = max_length - n_q - specials
        if room <= stride:
            raise InputError(f"split {split.name!r} question {split.ids[i]!r} has {n_q} tokens: at --max-length "
                             f"{max_length} it leaves {max(room, 0)} context tokens per window, which must exceed "
                             f"--stride {stride}; use a larger --max-length or a smaller --stride")
        enc = tokenizer(split.texts[i], split.pairs[i], truncation="only_second", max_length=max_length,
                        stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True, verbose=False)
        spans = _word_spans(split.pairs[i].split(" "))
        answers = split.extra["answers"][i]
        n = len(enc["input_ids"])
        windowed += n > 1
        found = False
        for k in range(n):
            al = align_tokens(enc["offset_mapping"][k], spans, None, [s == 1 for s in enc.sequence_ids(k)])
            s, e, lost = answer_positions(al["char_start"], al["char_end"], answers)
            held = bool(answers) and not lost
            found |= held
            targets.append(np.asarray([s, e], dtype=np.int64))
            question.append(i)
            window.append(k)
            in_window.append(int(held))
            ids.append(enc["input_ids"][k])
            if "token_type_ids" in enc:
                types.append(enc["token_type_ids"][k])
            for key in extra:
                extra[key].append(al[key])
        lost_answers += bool(answers) and not found
        unanswerable += not answers
    info.splits[split.name] = {"answers_lost": lost_answers, "unanswerable": unanswerable,
                               "questions": len(split), "windows": len(ids), "windowed_questions": windowed}
    q = np.asarray(question, dtype=np.int64)
    qids = split.ids
    split.texts = [split.texts[j] for j in q]
    split.pairs = [split.pairs[j] for j in q]
    split.ids = [f"{qids[j]}#{k}" for j, k in zip(q, window)]
    split.extra = {"answers": [split.extra["answers"][j] for j in q], "targets": targets,
                   "question_ids": [qids[j] for j in q], "question": q,
                   "window": np.asarray(window, dtype=np.int64), "answer_in_window": np.asarray(in_window, np.int64)}
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    return Tokenized(ids, types if len(types) == len(ids) else None, lengths, 0, extra=extra)


def gold_records(split: SplitData, info: TaskInfo) -> list[dict[str, Any]]:
    """What scoring needs beside the features, per example: words + gold tags, or context + gold answers."""
    if info.kind == "token":
        return [{"words": w, "tags": t} for w, t in zip(split.extra["words"], split.extra["tags"])]
    recs = [{"context": c, "question": q, "answers": [a["text"] for a in ans]}
            for c, q, ans in zip(split.pairs, split.texts, split.extra["answers"])]
    for r, qid in zip(recs, split.extra.get("question_ids", ())):  # windows: the question each belongs to
        r["question_id"] = qid
    return recs
