"""A head directory: weights in safetensors, everything else in JSON. Never pickle, never torch.save.

    head.safetensors           weights of the best seed (by the dev metric)
    seeds/<seed>/head.safetensors
    head.json                  format version, architecture, labels, layers, store fingerprint, backbone, metrics
    metrics.json               per seed and a `summary` (per split, per metric: mean, std)
    train_log.jsonl            one line per seed and epoch: loss, learning rate, dev metrics, seconds

The directory is written under a temporary name and renamed into place: it exists whole or not at all.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import torch

import featstore
from featstore.io.files import check_can_create

from . import __version__
from .errors import HeadError, InputError
from .nets import build_head, reads
from .registry import task_class
from .spec import HeadSpec
from .tasks import Task, task_of_head

FORMAT = "heads-head"
FORMAT_VERSION = 1
HEAD_JSON = "head.json"
WEIGHTS = "head.safetensors"
PROJECTION = "projection.safetensors"  # a projected store's map per layer: predict applies it to new texts
METRICS_JSON = "metrics.json"
TRAIN_LOG = "train_log.jsonl"
REQUIRED = ("head", "task", "architecture", "label_column", "label_names", "layers", "store", "backbone",
            "primary_metric", "seeds", "best_seed")


def check_out(out: str, overwrite: bool) -> None:
    """An existing --out is refused unless --overwrite, and never replaced if it is not a head directory."""
    if not os.path.exists(out):
        check_can_create(out, "--out")
        return
    if not os.path.isdir(out):
        raise InputError(f"--out {out} exists and is a file; give a directory path for the head")
    if not os.listdir(out):
        return
    if not os.path.isfile(os.path.join(out, HEAD_JSON)):
        raise InputError(f"--out {out} exists and is not a head directory (no {HEAD_JSON}); "
                         "refusing to replace it, choose another --out")
    if not overwrite:
        raise InputError(f"--out {out} already exists; use --overwrite to replace it, or choose another --out")


def _json_safe(obj: Any) -> Any:
    """NaN/inf (e.g. Pearson of constant predictions) as null: the files stay valid JSON for every reader."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(_json_safe(obj), f, indent=1, allow_nan=False)
        f.write("\n")


def save_run(out: str, meta: dict[str, Any], states: dict[int, dict[str, torch.Tensor]], metrics: dict[str, Any],
             log: list[dict[str, Any]], overwrite: bool, projection: dict[str, torch.Tensor] | None = None,
             extra: dict[int, dict[str, dict[str, torch.Tensor]]] | None = None) -> None:
    """Write the whole head directory to a temporary sibling, then rename it into place."""
    from safetensors.torch import save_file

    out = out.rstrip("/") or out
    check_out(out, overwrite)
    tmp = f"{out}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        for seed, state in states.items():
            tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
            md = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "head": meta["head"], "seed": str(seed)}
            os.makedirs(os.path.join(tmp, "seeds", str(seed)))
            save_file(tensors, os.path.join(tmp, "seeds", str(seed), WEIGHTS), metadata=md)
            if seed == meta["best_seed"]:
                save_file(tensors, os.path.join(tmp, WEIGHTS), metadata=md)
            for fname, part in ((extra or {}).get(seed) or {}).items():  # e.g. tuned top layers beside the head
                part = {k: v.detach().cpu().contiguous() for k, v in part.items()}
                save_file(part, os.path.join(tmp, "seeds", str(seed), fname), metadata=md)
                if seed == meta["best_seed"]:
                    save_file(part, os.path.join(tmp, fname), metadata=md)
        if projection:
            save_file({k: v.contiguous() for k, v in projection.items()}, os.path.join(tmp, PROJECTION),
                      metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        _write_json(os.path.join(tmp, HEAD_JSON), meta)
        _write_json(os.path.join(tmp, METRICS_JSON), metrics)
        with open(os.path.join(tmp, TRAIN_LOG), "w") as f:
            for rec in log:
                f.write(json.dumps(_json_safe(rec), allow_nan=False) + "\n")
        if os.path.isdir(out) and os.listdir(out):
            shutil.rmtree(out)  # check_out made sure it is a head directory and --overwrite was given
        elif os.path.isdir(out):
            os.rmdir(out)
        parent = os.path.dirname(os.path.abspath(out))
        os.makedirs(parent, exist_ok=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def head_meta(cfg: Any, store: Any, spec: HeadSpec, task: Task, layers: list[int], r: Any) -> dict[str, Any]:
    """head.json: what rebuilds the head, what it fits (store fingerprint), how to re-extract (backbone)."""
    m = store.manifest
    model = {k: m["model"].get(k) for k in ("name", "path", "revision", "weights_sha256", "num_layers",
                                            "hidden_size", "num_parameters", "architecture")}
    decisions = {str(s.seed): s.decision for s in r.seeds if s.decision}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "tool": {"name": "heads", "version": __version__, "featstore_version": featstore.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "head": spec.kind, "task": spec.task, "architecture": spec.to_json(),
        **task.to_meta(),
        "layers": layers, "pooling": spec.pooling,
        **({"decisions": decisions} if decisions else {}),
        "store": {"path": store.path, "fingerprint": store.fingerprint, "hidden_size": store.width,
                  "layers": store.layers, "dtype": store.dtype, "model": model, "tokenizer": m["tokenizer"],
                  "settings": m["settings"],
                  "dataset": {"splits": {k: {"sha256": v["sha256"], "n_examples": v["n_examples"]}
                                         for k, v in m["dataset"]["splits"].items()}}},
        "backbone": {"name": m["model"].get("name"), "path": m["model"].get("path"), "tokenizer": m["tokenizer"],
                     "settings": m["settings"], "runtime": m.get("runtime", {}),
                     "text_column": m["dataset"].get("text_column"), "pair_column": m["dataset"].get("pair_column"),
                     "num_parameters": m["model"].get("num_parameters")},
        "training": cfg.to_json(), "splits": r.splits, "seeds": list(cfg.seeds), "best_seed": r.best_seed,
        "primary_metric": r.primary_metric, "trainable_parameters": r.trainable_parameters,
        "trainable_percent": r.trainable_percent, "seconds_per_epoch": r.seconds_per_epoch,
        "metrics": r.summary,
    }


def read_meta(run: str) -> dict[str, Any]:
    """head.json of a head directory, checked for format, version and required keys."""
    if not os.path.isdir(run):
        raise HeadError(f"no head at {run}: expected a directory written by `heads train`")
    path = os.path.join(run, HEAD_JSON)
    if not os.path.isfile(path):
        raise HeadError(f"{run} is not a head directory: {HEAD_JSON} is missing")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HeadError(f"{path} is not valid JSON ({getattr(e, 'msg', e)}); the head is damaged, re-train or re-copy it")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise HeadError(f"{path} is not a heads head.json (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    v = meta.get("format_version")
    if v != FORMAT_VERSION:
        raise HeadError(f"{path}: head format version {v!r}, this heads reads version {FORMAT_VERSION}; "
                        "use the heads version that wrote it, or re-train")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise HeadError(f"{path} lacks {missing}; the head is damaged, re-train or re-copy it")
    if not isinstance(meta["layers"], list) or not all(isinstance(x, int) for x in meta["layers"]):
        raise HeadError(f"{path}: `layers` {meta['layers']!r} is not a list of layer indices")
    store = meta["store"]
    if not isinstance(store, dict) or not isinstance(store.get("fingerprint"), str) \
            or not isinstance(store.get("hidden_size"), int):
        raise HeadError(f"{path}: `store` lacks its fingerprint or hidden size; the head is damaged")
    bad = [name for name, ok in _META_CHECKS if not _holds(ok, meta)]
    if bad:
        raise HeadError(f"{path}: invalid {', '.join(bad)}; the head is damaged, re-train or re-copy it")
    return meta


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _holds(check: Any, meta: dict[str, Any]) -> bool:
    try:
        return bool(check(meta))
    except (KeyError, TypeError, AttributeError):
        return False


# Every field of head.json that eval/predict rely on, with its type: a damaged or hand-edited file is refused
# with the names of its bad fields instead of failing somewhere later.
_META_CHECKS = [
    ("seeds", lambda m: m["seeds"] and all(_is_int(s) and 0 <= s < 2**63 for s in m["seeds"])),
    ("best_seed", lambda m: _is_int(m["best_seed"]) and m["best_seed"] in m["seeds"]),
    ("layers", lambda m: m["layers"] and all(x >= 0 for x in m["layers"])),
    ("label_names", lambda m: m["label_names"] is None or (isinstance(m["label_names"], list)
                                                           and all(isinstance(n, str) for n in m["label_names"]))),
    ("store.model", lambda m: isinstance(m["store"]["model"], dict)
        and isinstance(m["store"]["model"].get("weights_sha256"), str)),
    ("store.tokenizer", lambda m: isinstance(m["store"]["tokenizer"]["sha256"], str)),
    ("store.dtype", lambda m: m["store"]["dtype"] in ("float16", "bfloat16", "float32")),
    ("backbone", lambda m: isinstance(m["backbone"], dict) and isinstance(m["backbone"].get("name") or
                                                                         m["backbone"].get("path"), str)),
    ("untrained_labels", lambda m: "untrained_labels" not in m or (
        isinstance(m["untrained_labels"], list) and isinstance(m["label_names"], list)
        and all(n in m["label_names"] for n in m["untrained_labels"]))),
    ("decisions", lambda m: "decisions" not in m or all(
        isinstance(d, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in d.values())
        for d in m["decisions"].values())),
    ("backbone.settings", lambda m: _is_int(m["backbone"]["settings"]["max_length"])
        and m["backbone"]["settings"]["max_length"] > 0 and isinstance(m["backbone"]["settings"]["truncation"], str)
        and m["backbone"]["settings"]["dtype"] in ("float16", "bfloat16", "float32")),
]


def _check_fits(spec: HeadSpec, state: dict[str, torch.Tensor], path: str) -> None:
    """Sizes in head.json are untrusted: build the head on the meta device (no memory) and compare its shapes
    with the weights actually saved, so nothing is ever allocated by a number in head.json."""
    bad = [f"{k} = {v}" for k, v in (("n_layers", spec.n_layers), ("n_layers_in", spec.n_layers_in))
           if v > max(64, len(state))]  # module counts: bounded before building even on the meta device
    if bad:
        raise HeadError(f"{path}: architecture {', '.join(bad)} cannot fit the {len(state)} saved weights; the "
                        "head is damaged")
    try:
        with torch.device("meta"):
            want = {k: tuple(v.shape) for k, v in build_head(spec).state_dict().items()}
    except (ValueError, RuntimeError, TypeError, ZeroDivisionError) as e:
        raise HeadError(f"{path}: the architecture in {HEAD_JSON} cannot be built ({type(e).__name__}); the head is "
                        "damaged")
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[0][0]
        raise HeadError(f"{path}: weights do not fit the architecture in {HEAD_JSON} (first difference: {diff}); "
                        "the head is damaged")


@dataclass
class LoadedHead:
    run: str
    meta: dict[str, Any]
    spec: HeadSpec
    model: torch.nn.Module
    seed: int
    task: Task  # with the decision settings (e.g. threshold) of this seed

    @property
    def reads(self) -> str:
        """`tokens` or `pooled`: the features the saved model takes (tuned top layers always take tokens)."""
        return "tokens" if "top_layers" in self.meta else reads(self.spec.kind, self.spec.task)

    @property
    def label_names(self) -> list[str] | None:
        return self.meta["label_names"]

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])


def load_head(run: str, seed: int | None = None, device: str = "cpu") -> LoadedHead:
    """Rebuild a trained head (eval mode): the best seed's weights, or those of `seed`."""
    from safetensors import safe_open

    meta = read_meta(run)
    spec = HeadSpec.from_json(meta["architecture"], os.path.join(run, HEAD_JSON))
    top = meta.get("top_layers")
    n_in = len(top["head_layers"]) if isinstance(top, dict) and isinstance(top.get("head_layers"), list) \
        else len(meta["layers"])
    if spec.n_layers_in != n_in or spec.hidden_size != meta["store"]["hidden_size"]:
        raise HeadError(f"{run}: architecture disagrees with its layers/hidden size; the head is damaged")
    if task_class(spec.task).named_outputs and (meta["label_names"] is None
                                                or len(meta["label_names"]) != spec.n_outputs):
        raise HeadError(f"{run}: {HEAD_JSON} names {len(meta['label_names'] or [])} labels for a head of "
                        f"{spec.n_outputs} outputs; the head is damaged")
    if seed is None:
        seed, path = int(meta["best_seed"]), os.path.join(run, WEIGHTS)
    else:
        path = os.path.join(run, "seeds", str(seed), WEIGHTS)
        if not os.path.isfile(path):
            raise InputError(f"{run} has no head for seed {seed}; its seeds are {meta['seeds']}")
    if not os.path.isfile(path):
        raise HeadError(f"{run}: {os.path.relpath(path, run)} is missing; re-train or re-copy the head")
    try:
        with safe_open(path, framework="pt") as f:
            md = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any failure to parse means a damaged file
        raise HeadError(f"{path} is corrupt or not a safetensors file ({type(e).__name__}: {str(e)[:120]}); "
                        "re-train or re-copy the head")
    if md.get("format") != FORMAT or md.get("format_version") != str(FORMAT_VERSION):
        raise HeadError(f"{path}: weights of format {md.get('format')!r} version {md.get('format_version')!r}; "
                        f"this heads reads {FORMAT} version {FORMAT_VERSION}")
    _check_fits(spec, state, path)
    model = build_head(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise HeadError(f"{path}: weights do not fit the architecture in {HEAD_JSON} ({first[:160]}); "
                        "the head is damaged")
    if top is not None:  # tuned top layers: the saved model runs them on the stored layer N-m
        from .top_layers import load_saved

        model = load_saved(meta, os.path.join(os.path.dirname(path), top.get("weights", "")), model)
    model.to(device).eval()
    task = task_of_head(meta)
    task.apply((meta.get("decisions") or {}).get(str(seed), {}))
    return LoadedHead(run, meta, spec, model, seed, task)
