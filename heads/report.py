"""Human-readable tables for train, eval and predict results."""
from __future__ import annotations

from typing import Any

from .evaluate import EvalResult
from .train import TrainResult


def _count(n: int | None) -> str:
    if not isinstance(n, int):
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def format_train(r: TrainResult) -> str:
    metrics = list(next(iter(r.summary.values())))
    seeds = [s.seed for s in r.seeds]
    role = {v: k for k, v in r.splits.items() if v is not None}
    context = f", context {r.context}" if r.context else ""
    lines = [f"{r.head} on {r.label_column!r} ({r.task}), layers {r.layers}{context}, seeds {','.join(map(str, seeds))}; "
             f"primary metric: {r.primary_metric}" + (f", model selection on {r.splits['dev']!r}"
                                                      if r.splits.get("dev") else ", no dev split: last epoch kept")]
    head = f"{'split':<22}" + "".join(f"{m:>20}" for m in metrics)
    lines += [head, "-" * len(head)]
    for split, per in r.summary.items():
        name = split + (f" ({role[split]})" if role.get(split, split) != split else "")
        cells = []
        for m in metrics:
            v = per[m]
            cells.append(f"{v['mean']:.4f} ± {v['std']:.4f}" if len(seeds) > 1 else f"{v['mean']:.4f}")
        lines.append(f"{name:<22}" + "".join(f"{c:>20}" for c in cells))
    pct = r.trainable_percent
    lines.append(f"trainable parameters {r.trainable_parameters:,}"
                 + (f" ({pct:.3f}% of the {_count(r.backbone_parameters)}-parameter backbone)" if pct is not None else ""))
    best_epochs = ", ".join(f"seed {s.seed}: {s.best_epoch}/{s.epochs_run}" for s in r.seeds)
    lines.append(f"time per epoch {r.seconds_per_epoch:.2f} s on {r.device}; best epoch ({best_epochs})")
    chosen = [f"seed {s.seed}: " + ", ".join(f"{k} {v:g}" for k, v in s.decision.items()) for s in r.seeds
              if s.decision]
    if chosen:  # decision settings the task chose on dev (e.g. a multi-label threshold), kept in head.json
        lines.append(f"chosen on {r.splits.get('dev') or r.splits['train']}: {'; '.join(chosen)}")
    lines.append(f"mean ± sample std over {len(seeds)} seed(s); best seed {r.best_seed} (by "
                 f"{r.splits.get('dev') or r.splits['train']}) saved to {r.out}")
    return "\n".join(lines)


def format_eval(r: EvalResult) -> str:
    cells = "  ".join(f"{k} {v:.4f}" for k, v in r.metrics.items())
    return f"{r.run} on {r.store} [{r.split}] ({r.n_examples:,} examples, seed {r.seed}): {cells}"


def compare_runs(runs: list[str]) -> list[dict[str, Any]]:
    """One row per head directory, from its head.json and metrics.json alone (nothing is re-run)."""
    from .artifacts import read_meta
    from .errors import HeadError

    import json
    import os

    rows = []
    for run in runs:
        meta = read_meta(run)
        try:
            with open(os.path.join(run, "metrics.json"), encoding="utf-8") as f:
                metrics = json.load(f)
            splits, primary = metrics["splits"], metrics["primary_metric"]
            seconds = [s["seconds_per_epoch"] for s in metrics["seeds"].values()]
            summary = {role: metrics["summary"][splits[role]][primary] if splits.get(role) else None
                       for role in ("dev", "test")}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise HeadError(f"{run}: metrics.json is missing or damaged ({type(e).__name__}); re-copy or re-train "
                            "the head")
        row = {"run": run, "head": meta["head"], "layers": meta["layers"], "pooling": meta.get("pooling"),
               "primary_metric": primary, "seeds": meta["seeds"],
               "trainable_parameters": meta["trainable_parameters"], "trainable_percent": meta["trainable_percent"],
               "seconds_per_epoch": sum(seconds) / len(seconds)}
        row.update(summary)
        rows.append(row)
    return rows


def format_compare(rows: list[dict[str, Any]]) -> str:
    def cell(v: dict[str, float] | None) -> str:
        if v is None or v.get("mean") is None:  # no such split, or an undefined metric (saved as null)
            return "-"
        return f"{v['mean']:.4f} ± {v['std'] or 0.0:.4f}"

    head = f"{'run':<28}{'head':<9}{'metric':<10}{'test (mean ± std)':>20}{'dev (mean ± std)':>20}" \
           f"{'seeds':>7}{'trainable':>12}{'% bb':>8}{'s/epoch':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        pct = f"{r['trainable_percent']:.2f}" if r["trainable_percent"] is not None else "?"
        lines.append(f"{r['run'][-27:]:<28}{r['head']:<9}{r['primary_metric']:<10}{cell(r['test']):>20}"
                     f"{cell(r['dev']):>20}{len(r['seeds']):>7}{r['trainable_parameters']:>12,}{pct:>8}"
                     f"{r['seconds_per_epoch']:>9.2f}")
    lines.append("test: the split reported once per seed on the checkpoint the dev split chose; "
                 "% bb: trainable parameters as a share of the backbone's")
    return "\n".join(lines)
