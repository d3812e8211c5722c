"""Write the golden stores of this release and the digests of every array a reader returns from them.

Golden stores are test data: every later featstore must open them, read them bit-exactly (the digests in
`digests.json`) and verify them (tests/featstore/test_golden.py). Run this once per store format version,
from a release that writes that version, into a new `v<N>/` directory; never regenerate an existing one:

    PYTHONPATH=. HF_HUB_OFFLINE=1 python tests/data/golden/make_golden.py

It builds a tiny random encoder (2 layers, hidden 32; no download) and a handful of examples per task, so
the whole set stays a few hundred KB.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

CONLL = ("Empire\tB-LOC\nState\tI-LOC\nBuilding\tI-LOC\nopens\tO\n\n"
         "John\tB-PER\nunbelievably\tO\nlikes\tO\nZurich\tB-LOC\n\n"
         "Mary\tB-PER\nvisits\tO\nParis\tB-LOC\ntoday\tO\n\n")
CONTEXT = "The quick brown fox jumps over the lazy dog near the river bank."
SQUAD = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": [
    {"id": "q1", "question": "Who jumps?", "answers": [{"text": "quick brown fox", "answer_start": 4}]},
    {"id": "q2", "question": "Where?", "answers": [{"text": "river bank", "answer_start": 53}]},
    {"id": "q3", "question": "Why?", "answers": [], "is_impossible": True}]}]}]}
SENTENCES = [("the cat sits on the mat", "pos"), ("market shares fell", "neg"), ("the team rose quickly", "pos"),
             ("a red phone", "neutral"), ("vote for the minister", "neg"), ("music film goal", "neutral"),
             ("the dog runs", "pos"), ("blue software", "neg")]

# name -> (task, extract settings); the converted store is made from `zarr-sentence-float16`. HDF5 files carry
# a fixed overhead per array, so they store one layer (the set stays small); the Zarr ones two.
STORES: dict[str, tuple[str, dict[str, Any]]] = {
    "zarr-sentence-float16": ("sentence", {}),
    "hdf5-sentence-float16.h5": ("sentence", {"format": "hdf5"}),
    "zarr-sentence-bfloat16": ("sentence", {"dtype": "bfloat16"}),
    "zarr-sentence-int8": ("sentence", {"encoding": "int8"}),
    "hdf5-sentence-int8.h5": ("sentence", {"format": "hdf5", "encoding": "int8"}),
    "zarr-sentence-projected": ("sentence", {"project": 8}),
    "zarr-token-float16": ("token", {}),
    "hdf5-token-float16.h5": ("token", {"format": "hdf5"}),
    "zarr-span-float16": ("span", {"max_length": 16}),
    "hdf5-span-float16.h5": ("span", {"format": "hdf5", "max_length": 16}),
}
CONVERTED = "zarr-converted-int8"


def digest(x: Any) -> str:
    """sha256 over dtype, shape and bytes (JSON values: over their canonical text)."""
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x)
        h = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
        h.update(x.view(np.uint8).reshape(-1).data)
        return h.hexdigest()
    return hashlib.sha256(json.dumps(x, sort_keys=True).encode()).hexdigest()


def store_arrays(store) -> dict[str, Any]:
    """Everything the public reader returns from a store, by name."""
    out: dict[str, Any] = {"fingerprint": store.fingerprint, "layers": store.layers, "encoding": store.encoding}
    for k in store.layers:
        proj = store.projection(k)
        if proj is not None:
            out[f"projection/L{k}/mean"], out[f"projection/L{k}/basis"] = proj
        for col in store.label_columns:
            feats = store.label_features(col, k)
            if feats is not None:
                out[f"label_features/{col}/L{k}"] = feats
    for name in store.splits:
        sp = store.split(name)
        p = f"{name}/"
        out[p + "offsets"], out[p + "lengths"], out[p + "rows"] = sp.offsets, sp.lengths, sp.rows
        out[p + "example_ids"], out[p + "input_order"] = sp.example_ids, sp.input_order()
        out[p + "input_ids"] = np.concatenate([sp.input_ids(i) for i in range(len(sp))])
        for col in store.label_columns:
            out[p + f"labels/{col}"] = sp.targets(col)
        if store.task == "token":
            out[p + "token_targets"] = sp.token_targets()
        if store.task == "span":
            out[p + "span_targets"] = sp.span_targets()
        if store.task != "sentence":
            out[p + "gold"] = sp.gold()
            for a in ("word_index", "char_start", "char_end"):
                out[p + a] = sp.token_array(a)
        for k in store.layers:
            out[p + f"L{k}/tokens"] = sp.tokens(k, 0, sp.n_tokens)
            out[p + f"L{k}/cls"], out[p + f"L{k}/mean"] = sp.pooled("cls", k), sp.pooled("mean", k)
            if store.encoding in ("int8", "fp8"):
                codes, scales, segs = sp.token_codes(k, 0, sp.n_tokens)
                out[p + f"L{k}/codes"], out[p + f"L{k}/scales"] = codes, scales
                shift, gain = sp.channel_tables(k)
                out[p + f"L{k}/shift"], out[p + f"L{k}/gain"] = shift, gain
    return out


def store_digests(path: str) -> dict[str, str]:
    import featstore

    with featstore.open_store(path) as store:
        return {k: digest(v) for k, v in sorted(store_arrays(store).items())}


def _write_inputs(d: str) -> dict[str, dict[str, str]]:
    sent = {}
    for split, rows in (("train", SENTENCES[:6]), ("validation", SENTENCES[6:])):
        sent[split] = os.path.join(d, f"{split}.jsonl")
        with open(sent[split], "w") as f:
            for i, (text, label) in enumerate(rows):
                f.write(json.dumps({"id": f"{split}-{i}", "text": text, "label": label}) + "\n")
    token = os.path.join(d, "train.conll")
    with open(token, "w") as f:
        f.write(CONLL)
    span = os.path.join(d, "squad.json")
    with open(span, "w") as f:
        json.dump(SQUAD, f)
    return {"sentence": sent, "token": {"train": token}, "span": {"train": span}}


def main(out_dir: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
    import featstore
    from featstore.convert import convert
    from featstore.extract import ExtractConfig, extract
    from featstore.store.manifest import FORMAT_VERSION
    from featstore.verify import verify
    from tests.conftest import build_model

    if os.path.exists(out_dir):
        raise SystemExit(f"{out_dir} exists: golden stores are never regenerated; write a new version directory")
    os.makedirs(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model("bert", os.path.join(tmp, "bert"))
        inputs = _write_inputs(tmp)
        for name, (task, extra) in STORES.items():
            cfg = ExtractConfig(model=model, data=inputs[task], out=os.path.join(out_dir, name),
                                layers="2" if name.endswith(".h5") else "1,2",
                                max_length=extra.pop("max_length", 24), task=task, progress=False,
                                label_columns=["label"] if task == "sentence" else [],
                                id_column="id" if task == "sentence" else None, **extra)
            extract(cfg)
        convert(os.path.join(out_dir, "zarr-sentence-float16"), os.path.join(out_dir, CONVERTED), "int8", layers="2")
    record: dict[str, Any] = {"format_version": FORMAT_VERSION, "featstore": featstore.__version__, "stores": {}}
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        problems = verify(path)
        assert not problems, (name, problems)
        record["stores"][name] = store_digests(path)
    with open(os.path.join(out_dir, "digests.json"), "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    from featstore.store.manifest import FORMAT_VERSION as _V  # noqa: E402

    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, f"v{_V}"))
