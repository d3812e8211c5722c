"""`heads`: train Y-Tuning heads and probes on a featstore store; evaluate them; predict on raw text."""
from __future__ import annotations

import json

import click

from heads.registry import HEADS, TASKS

from . import common
from .common import OneLineErrors, check_writable, user_errors

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(cls=OneLineErrors, context_settings=CONTEXT)
@click.version_option(package_name="featstore", prog_name="heads")
def main() -> None:
    """Train small heads on frozen features from a store: no backbone in memory while training."""


@main.command()
@click.argument("head", type=click.Choice(list(HEADS)))
@click.option("--store", required=True, help="Store written by `featstore extract` (directory or .h5).")
@click.option("--label-column", default=None, help="Label column of the store to predict (sentence tasks).")
@click.option("--task", default="auto", show_default=True,
              type=click.Choice(["auto", *TASKS]),
              help="auto: from the store (token/span stores) or the column (classes or numbers); regression also "
                   "takes classes named by numbers.")
@click.option("--train-split", default="train", show_default=True)
@click.option("--dev-split", default="validation", show_default=True,
              help="Split for model selection and early stopping; 'none' keeps the last epoch.")
@click.option("--test-split", default="test", show_default=True, help="Split reported once, on the best checkpoint; or 'none'.")
@click.option("--layers", default=None,
              help="Stored layers: 'all', or absolute indices; negative count from the deepest stored "
                   "(-1 = last).  [default: all for ytuning, -1 for linear/mlp]")
@click.option("--epochs", default=10, show_default=True, type=int)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--lr", default=None, type=float, help="Peak learning rate of AdamW.  [default: 1e-3]")
@click.option("--weight-decay", default=0.01, show_default=True, type=float)
@click.option("--warmup", default=0.1, show_default=True, type=float, help="Warm-up, as a fraction of all steps.")
@click.option("--schedule", default="linear", show_default=True, type=click.Choice(["linear", "cosine", "constant"]),
              help="Decay after warm-up.")
@click.option("--grad-clip", default=1.0, show_default=True, type=float, help="Max gradient norm (0: off).")
@click.option("--patience", default=3, show_default=True, type=int,
              help="Stop after this many epochs without dev improvement (0: never stop early).")
@click.option("--seeds", default="0", show_default=True, help="One head per seed, e.g. 0,1,2; mean ± std reported.")
@click.option("--d-head", default=128, show_default=True, type=int, help="Y-Tuning width; hidden width of mlp.")
@click.option("--n-layers", default=2, show_default=True, type=int, help="Y-Tuning label blocks.")
@click.option("--n-heads", default=4, show_default=True, type=int, help="Attention heads per Y-Tuning block.")
@click.option("--dropout", default=0.1, show_default=True, type=float)
@click.option("--label-init", default="random", show_default=True, type=click.Choice(["random", "prior"]),
              help="Y-Tuning label queries: random, or from the backbone's features of the label names.")
@click.option("--pooling", default="mean", show_default=True, type=click.Choice(["cls", "mean"]),
              help="Pooled vectors for linear/mlp.")
@click.option("--max-memory", default=None,
              help="RAM for features, e.g. 8GB; larger splits are streamed.  [default: half the available RAM]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--threads", default=None, type=int,
              help="CPU threads for torch (default: all cores but one, which the batch prefetcher uses; all cores "
                   "with --tune-top-layers).")
@click.option("--tune-top-layers", default=0, show_default=True, type=int, metavar="M",
              help="Also tune the backbone's top M layers, fed the stored layer N-M (ytuning, linear); only "
                   "those layers are loaded.")
@click.option("--top-lr", default=5e-5, show_default=True, type=float,
              help="Peak learning rate of the tuned top layers (0: frozen).")
@click.option("--backbone", default=None, help="Backbone directory for --tune-top-layers, when the store's moved.")
@click.option("--context-layers", default=None, type=int, metavar="K",
              help="Token and span tasks (ytuning): K layers over the projected token memory that let each token "
                   "see the others before scoring (span heads also see which tokens are question and which "
                   "context); 0: none.  [default: 2 for token and span tasks (chosen on dev, docs/token-context.md), "
                   "0 otherwise]")
@click.option("--context", default=None, type=click.Choice(["lstm", "transformer"]),
              help="Kind of context layers: a residual BiLSTM, or small pre-norm transformer layers.  "
                   "[default: lstm]")
@click.option("--out", required=True, help="Head directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing head directory at --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@common.storage_options
@common.cache_dir
@user_errors
def train(head, store, label_column, task, train_split, dev_split, test_split, layers, epochs, batch_size, lr,
          weight_decay, warmup, schedule, grad_clip, patience, seeds, d_head, n_layers, n_heads, dropout, label_init,
          pooling, max_memory, device, threads, tune_top_layers, top_lr, backbone, context_layers, context, out,
          overwrite, quiet, as_json,
          storage_option, cache_dir) -> None:
    """Train a HEAD (ytuning, linear or mlp) on a store's features; write it to --out.

    The dev split selects the best epoch; the test split is evaluated once, on that checkpoint.
    """
    from heads.config import TrainConfig, parse_bytes, parse_seeds
    from heads.report import format_train
    from heads.train import train as run

    if patience < 0:
        raise click.BadParameter("must be >= 0 (0: never stop early)", param_hint="--patience")
    cfg = TrainConfig(head=head, store=store, label_column=label_column, out=out, train_split=train_split,
                      dev_split=dev_split, test_split=test_split, layers=layers, task=task, epochs=epochs,
                      batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup, schedule=schedule,
                      grad_clip=grad_clip, patience=patience or None, seeds=parse_seeds(seeds), d_head=d_head,
                      n_layers=n_layers, n_heads=n_heads, dropout=dropout, label_init=label_init, pooling=pooling,
                      max_memory=parse_bytes(max_memory) if max_memory is not None else None, device=device,
                      threads=threads, overwrite=overwrite, progress=not quiet,
                      storage_options=common.options(storage_option), cache_dir=cache_dir,
                      tune_top_layers=tune_top_layers, top_lr=top_lr, backbone=backbone,
                      context_layers=context_layers, context=context)
    result = run(cfg)
    click.echo(json.dumps(result.to_json(), indent=1) if as_json else format_train(result))


@main.command()
@click.argument("head", type=click.Choice(list(HEADS)))
@click.option("--store", required=True, help="Store written by `featstore extract` (directory or .h5).")
@click.option("--label-column", default=None, help="Label column of the store to predict (sentence tasks).")
@click.option("--task", default="auto", show_default=True, type=click.Choice(["auto", *TASKS]))
@click.option("--train-split", default="train", show_default=True)
@click.option("--dev-split", default="validation", show_default=True, help="Split that picks epochs and the config.")
@click.option("--test-split", default="test", show_default=True,
              help="Split scored once, for the picked config only; or 'none'.")
@click.option("--seeds", default="0", show_default=True, help="Every config is trained with each seed, e.g. 0,1,2; "
              "the dev mean over seeds picks the config.")
@click.option("--grid", "grid", multiple=True, metavar="NAME=V1,V2",
              help="Values of a `heads train` option, e.g. lr=3e-4,1e-3 or layers=all,-1 (split on | instead when a "
                   "value holds a comma: layers=all|-2,-1). Repeatable: every combination is trained. One value "
                   "fixes an option: dropout=0.2.")
@click.option("--range", "ranges", multiple=True, metavar="NAME=LOW:HIGH[:log]",
              help="A numeric option sampled in a range with --samples, e.g. lr=1e-4:1e-2:log. Repeatable.")
@click.option("--samples", default=None, type=int,
              help="Sample this many configs (Optuna TPE over --range and --grid, with pruning) instead of the grid.")
@click.option("--out", required=True, help="Sweep directory: the study, each config's heads, and best/ (the picked "
              "config's head directory).")
@click.option("--storage", default=None, help="Database URL of the study, for workers on several machines (e.g. "
              "postgresql://host/db).  [default: SQLite at OUT/sweep.db]")
@click.option("--workers", default=1, show_default=True, type=int,
              help="Processes that train configs side by side (one per GPU when there are several).")
@click.option("--heads-per-pass", default=None, type=int,
              help="Most heads trained from one read of each batch.  [default: as many as memory allows, up to 16]")
@click.option("--heartbeat", default=60, show_default=True, type=int, metavar="SECONDS",
              help="How often a worker marks its configs alive in the study; configs of a worker silent for 3 "
                   "heartbeats (a machine that died) are trained by the others.")
@click.option("--max-memory", default=None,
              help="RAM for features, e.g. 8GB; larger splits are streamed.  [default: half the available RAM]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--threads", default=None, type=int, help="CPU threads for torch, per worker.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@common.storage_options
@common.cache_dir
@user_errors
def sweep(head, store, label_column, task, train_split, dev_split, test_split, seeds, grid, ranges, samples, out,
          storage, workers, heads_per_pass, heartbeat, max_memory, device, threads, quiet, as_json, storage_option,
          cache_dir) -> None:
    """Train HEAD with every config of a grid (or sampled ranges) x seed; pick the config on dev.

    Configs that read the same features train together, each batch read once for all of them. Only the picked
    config is scored on test; its heads are the head directory OUT/best. Rerun the same command to resume a
    killed sweep; run it on several machines with one --storage to share the work.
    """
    from heads.config import parse_bytes, parse_seeds
    from heads.sweep import SweepConfig, sweep as run
    from heads.sweep.report import format_sweep

    fixed = dict(head=head, store=store, label_column=label_column, task=task, train_split=train_split,
                 dev_split=dev_split, test_split=test_split, seeds=parse_seeds(seeds),
                 max_memory=parse_bytes(max_memory) if max_memory is not None else None, device=device,
                 threads=threads, storage_options=common.options(storage_option), cache_dir=cache_dir)
    sc = SweepConfig(fixed=fixed, grid=list(grid), ranges=list(ranges), samples=samples, out=out, storage=storage,
                     workers=workers, heads_per_pass=heads_per_pass, heartbeat=heartbeat, progress=not quiet)
    result = run(sc)
    click.echo(json.dumps(result.to_json(), indent=1) if as_json else format_sweep(result))


@main.command("eval")
@click.argument("run")
@click.option("--store", required=True, help="Store with the same features as the head's (same fingerprint).")
@click.option("--split", default="test", show_default=True)
@click.option("--seed", default=None, type=int, help="Evaluate this seed's head instead of the best one.")
@click.option("--batch-size", default=64, show_default=True, type=int)
@click.option("--max-memory", default=None, help="RAM for features, e.g. 8GB.  [default: half the available RAM]")
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", default=None, type=int, help="CPU threads for torch (default: all cores but one).")
@click.option("--predictions", "predictions_out", default=None, help="Write per-example predictions (JSON lines).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@common.storage_options
@common.cache_dir
@user_errors
def evaluate(run, store, split, seed, batch_size, max_memory, device, threads, predictions_out, as_json,
             storage_option, cache_dir) -> None:
    """Evaluate the head in RUN on one split of a store."""
    from heads.config import parse_bytes
    from heads.evaluate import evaluate as run_eval
    from heads.report import format_eval

    if predictions_out:
        check_writable(predictions_out, "--predictions")
    r = run_eval(run, store, split, seed=seed, batch_size=batch_size, device=device,
                 max_memory=parse_bytes(max_memory) if max_memory is not None else None, threads=threads,
                 storage_options=common.options(storage_option), cache_dir=cache_dir)
    if predictions_out:
        _write_jsonl(predictions_out, r.predictions)
    click.echo(json.dumps(r.to_json(), indent=1) if as_json else format_eval(r))


@main.command()
@click.argument("run")
@click.option("--text", "texts", multiple=True, help="Text to classify; repeatable.")
@click.option("--text-pair", "pairs", multiple=True, help="Second text of a pair, one per --text (pair tasks).")
@click.option("--context", "contexts", multiple=True, help="Span heads: a context to answer from; repeatable.")
@click.option("--question", "questions", multiple=True, help="Span heads: the question, one per --context.")
@click.option("--input", "input_path", default=None,
              help="File of texts: .jsonl (the store's text column, or 'text') or plain text, one per line.")
@click.option("--output", "output_path", default=None, help="Write predictions here (JSON lines).")
@click.option("--seed", default=None, type=int, help="Use this seed's head instead of the best one.")
@click.option("--model", default=None, help="Backbone directory, when the one named in the head moved.")
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines: text, label, probabilities.")
@user_errors
def predict(run, texts, pairs, contexts, questions, input_path, output_path, seed, model, batch_size, device,
            as_json) -> None:
    """Label raw texts with the head in RUN: loads its backbone, extracts with the store's settings."""
    from heads.artifacts import read_meta
    from heads.predict import predict as run_predict, read_inputs
    from heads.tasks import task_of_head

    if contexts or questions:
        if texts or pairs or input_path:
            raise click.UsageError("give --context/--question (span heads) or --text, not both")
        if len(contexts) != len(questions):
            raise click.UsageError(f"{len(contexts)} --context but {len(questions)} --question; give one of each")
        texts, pairs = contexts, questions
    if texts and input_path:
        raise click.UsageError("give --text or --input, not both")
    if not texts and not input_path:
        raise click.UsageError("nothing to predict: give --text (repeatable) or --input FILE")
    if output_path:
        check_writable(output_path, "--output")
    meta = read_meta(run)
    if input_path:
        bb = meta["backbone"]
        texts, pair_list = read_inputs(input_path, bb.get("text_column"), bb.get("pair_column"))
    else:
        texts, pair_list = list(texts), (list(pairs) if pairs else None)
    recs = run_predict(run, texts, pair_list, seed=seed, model=model, batch_size=batch_size, device=device)
    if output_path:
        _write_jsonl(output_path, recs)
        click.echo(f"wrote {len(recs)} predictions to {output_path}", err=True)
        return
    task = task_of_head(meta)
    for rec in recs:
        click.echo(json.dumps(rec) if as_json else task.format_record(rec))


def _write_jsonl(path: str, recs: list) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


@main.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def compare(runs, as_json) -> None:
    """Compare trained head directories side by side (test and dev metric, mean ± std over seeds)."""
    from heads.report import compare_runs, format_compare

    rows = compare_runs(list(runs))
    click.echo(json.dumps(rows, indent=1) if as_json else format_compare(rows))


@main.command()
@click.argument("run")
@click.option("--out", required=True, help="Output .safetensors file.")
@click.option("--seed", default=None, type=int, help="Which seed's head (default: the best).")
@user_errors
def export(run, out, seed) -> None:
    """Export RUN's head to initialise a classifier on top of the backbone (head-first fine-tuning).

    A linear head becomes `weight` (labels x hidden) and `bias` with its input standardisation folded in:
    logits = mean_or_cls_pool(backbone(x)) @ weight.T + bias. Other heads are exported as their state dict.
    """
    from heads.export import export_head

    meta = export_head(run, out, seed)
    click.echo(f"wrote {out}: {meta['kind']} head, layers {meta['layers']}, pooling {meta['pooling']}")
    if meta.get("backbone_file"):
        click.echo(f"wrote {meta['backbone_file']}: tuned layers {meta['tuned_layers']} under the full model's names")


if __name__ == "__main__":
    main()
