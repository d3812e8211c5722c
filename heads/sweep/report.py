"""The sweep's table: configs sorted by dev, the picked one marked, its test score beside it."""
from __future__ import annotations

from .driver import SweepResult
from .space import _show


def format_sweep(r: SweepResult) -> str:
    pm = r.primary_metric
    cols = [c for c in r.swept if len({repr(row.params.get(c)) for row in r.rows}) > 1]
    fixed = [c for c in r.swept if c not in cols]
    width = {c: max(len(c), *(len(_show(row.params.get(c))) for row in r.rows)) for c in cols}
    head = "  ".join(f"{c:>{width[c]}}" for c in cols) + f"  {'dev ' + pm:>20}  {'best epochs':>12}  state"
    lines = [f"{len(r.rows)} configs x seeds {','.join(map(str, r.seeds))}; sorted by {pm} on {r.dev_split!r} "
             f"(mean ± std over seeds, {'higher' if r.higher_is_better else 'lower'} is better)"
             + (f"; all with {' '.join(f'{c}={_show(r.rows[0].params.get(c))}' for c in fixed)}" if fixed else ""),
             head, "-" * len(head)]
    for i, row in enumerate(r.rows):
        dev = f"{row.dev['mean']:.4f} ± {row.dev['std']:.4f}" if row.dev.get("n") else "-"
        epochs = ",".join(map(str, row.best_epochs)) or "-"
        mark = "  <- picked" if i == 0 else ""
        lines.append("  ".join(f"{_show(row.params.get(c)):>{width[c]}}" for c in cols)
                     + f"  {dev:>20}  {epochs:>12}  {row.state}{mark}")
    picked = " ".join(f"{k}={_show(v)}" for k, v in r.picked.items())
    if r.test:
        cells = "  ".join(f"{m} {v['mean']:.4f} ± {v['std']:.4f}" for m, v in r.test.items())
        lines.append(f"picked {picked}: test {cells} (the only config scored on test)")
    else:
        lines.append(f"picked {picked} (no test split)")
    lines.append(f"its heads: {r.best} (heads eval/predict/compare/export); table: {r.out}/sweep.json; "
                 f"{r.seconds:.1f} s")
    return "\n".join(lines)
