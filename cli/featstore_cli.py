"""`featstore`: extract features once into a store; inspect and verify stores."""
from __future__ import annotations

import json
import sys

import click

from featstore import __version__
from featstore.store import FORMATS, compressions
from featstore.store.encoding import ENCODINGS

from .common import OneLineErrors, RESUMABLE, cache_dir, options, storage_options, user_errors

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(cls=OneLineErrors, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="featstore")
def main() -> None:
    """Compute a frozen encoder's hidden states once; reuse them for every head, seed and teammate."""


INPUT_OPTIONS = [  # what extract and estimate both take: the inputs, the model and what is kept of it
    click.option("--model", required=True, help="Hub id, alias (deberta-v2-xxlarge, roberta-large, ...) or local dir."),
    click.option("--data", "data", multiple=True, required=True, metavar="SPLIT=PATH",
                 help="Input split: CSV/TSV, JSONL, Parquet or a datasets directory. Repeat per split."),
    click.option("--text-column", default="text", show_default=True),
    click.option("--text-pair-column", "pair_column", default=None, help="Second text of a pair (e.g. sentence2)."),
    click.option("--label-column", "label_columns", multiple=True, metavar="NAME[:KIND] | NAME=COL,COL,...",
                 help="Target column; repeatable. Text/integer labels are classes, fractional numbers regression, "
                      "lists of names multi-label (NAME:multilabel for `a|b` text in CSV); NAME=COL1,COL2,... names "
                      "0/1 columns together as one multi-label column."),
    click.option("--id-column", default=None, help="Unique example id column (default: SPLIT-ROW)."),
    click.option("--layers", default="-1", show_default=True,
                 help="Comma-separated layer indices (negative count from the top, 0 = embeddings) or 'all'."),
    click.option("--max-length", default=None, type=int,
                 help="Tokens per input; longer ones are truncated (default: the model's limit, at most 512)."),
    click.option("--truncation", default=None, type=click.Choice(["longest_first", "only_first", "only_second"]),
                 help="Which text of a pair is cut (default: longest_first; --task span: only_second, the context)."),
    click.option("--dtype", default=None, type=click.Choice(["float16", "bfloat16", "float32"]),
                 help="Stored float dtype (default float16); the same as --encoding with a float name."),
    click.option("--encoding", default=None, type=click.Choice(list(ENCODINGS)),
                 help="How values are stored: a float dtype, or 8-bit codes (int8, fp8 = e4m3) with per-token scales "
                      "after a per-channel standardisation; readers decode them to float32. Default: --dtype."),
    click.option("--project", default=None, type=click.IntRange(min=1), metavar="N",
                 help="Keep N principal directions per layer (an integer, e.g. a quarter of the hidden size; PCA "
                      "fitted on a sample of the training split, kept in the store; label-name features too)."),
    click.option("--format", "format", default=FORMATS[0], show_default=True, type=click.Choice(list(FORMATS))),
    click.option("--segment-mb", default=256.0, show_default=True, type=float,
                 help="Target segment size (unit of resume)."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ..."),
    click.option("--allow-empty-text", is_flag=True,
                 help="Keep empty or whitespace-only texts (refused by default: they are almost always a data bug)."),
    click.option("--task", default="sentence", show_default=True, type=click.Choice(["sentence", "token", "span"]),
                 help="token: a tag per word (CoNLL files, or JSONL/Parquet list columns); span: extractive QA "
                      "(SQuAD JSON v1.1/v2, or JSONL with context, question, answers)."),
    click.option("--tokens-column", default="tokens", show_default=True, help="Token task, JSONL/Parquet: the words."),
    click.option("--tags-column", default="tags", show_default=True, help="Token task, JSONL/Parquet: the tags."),
    click.option("--tag-scheme", default="auto", show_default=True,
                 type=click.Choice(["auto", "IOB2", "IOBES", "none"]),
                 help="Entity scheme of the tags (IOB2 = BIO); none for plain tag sets such as POS."),
    click.option("--repair-tags", is_flag=True,
                 help="Start an entity at an I- tag without its B- instead of refusing."),
    click.option("--repair-answers", is_flag=True,
                 help="Span task: move an answer whose text is not at its answer_start to the nearest place it "
                      "occurs."),
    click.option("--stride", default=None, type=click.IntRange(min=1), metavar="N",
                 help="Span task: a context longer than --max-length becomes overlapping windows that share N tokens "
                      "(HF's doc_stride), each stored as an example linked to its question; windows without the "
                      "answer point at token 0."),
    click.option("--strict-labels", is_flag=True,
                 help="Refuse a tag or class that occurs in another split but not in train (by default it is kept in "
                      "the vocabulary, counted in the summary and the manifest, and warned about)."),
]


def input_options(fn):
    for option in reversed(INPUT_OPTIONS):
        fn = option(fn)
    return fn


def _config(out: str, opts: dict, **more):
    """The ExtractConfig of a command's input options (parsed `--data`, listed label columns)."""
    from featstore.extract import ExtractConfig
    from featstore.extract.inputs import parse_split_specs

    opts = {**opts, "data": parse_split_specs(list(opts["data"])), "label_columns": list(opts["label_columns"])}
    return ExtractConfig(out=out, **opts, **more)


@main.command()
@input_options
@click.option("--compression", default="none", show_default=True,
              help="; ".join(f"{f}: {'|'.join(compressions(f))}" for f in FORMATS) + ".")
@click.option("--batch-tokens", default=16384, show_default=True, type=int, help="Padded tokens per forward batch.")
@click.option("--chunk-mb", default=4.0, show_default=True, type=float,
              help="Largest chunk; each array's chunks are fitted to its row count (no padding on disk).")
@click.option("--io-threads", default=None, type=click.IntRange(min=1),
              help="Threads that write and checksum segment files (default: twice the cores, 2 to 8).")
@click.option("--encode-on", default="auto", show_default=True, type=click.Choice(["auto", "device", "host"]),
              help="Where 8-bit codes are computed: on the device before the copy to the host (auto: on a GPU), "
                   "or on the host writer thread. The stored codes are the same.")
@click.option("--hash", "hash_name", default="sha256", show_default=True, type=click.Choice(["sha256", "blake3"]),
              help="Checksum of each file in the manifest; blake3 is ~2.5x faster per core (docs/speed.md).")
@click.option("--compute-dtype", default="auto", show_default=True,
              help="Model dtype for the forward pass (auto: bfloat16 on CUDA, float32 on CPU).")
@click.option("--out", required=True,
              help="Store path: a directory (zarr) or a .h5 file (hdf5); or an fsspec URL (s3://..., zarr): each "
                   "rank uploads its committed segments, the manifest last.")
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
              help="fsspec option when --out is a URL (repeatable; as for push).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out.")
@click.option("--no-space-check", is_flag=True,
              help="Start even when --out's file system has less free space than the estimated store.")
@click.option("--free-space", default=None, metavar="SIZE",
              help="Free space to check against instead of what the file system reports (a quota), e.g. 200G.")
@click.option("--quiet", is_flag=True, help="No progress bar and no size estimate on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@user_errors(interrupted=RESUMABLE)
def extract(compression, batch_tokens, chunk_mb, io_threads, encode_on, hash_name, compute_dtype, out, storage_option,
            overwrite, no_space_check, free_space, quiet, as_json, **inputs) -> None:
    """Run the frozen MODEL once over every split and write the chosen layers to a store.

    Prints the estimated store size first and refuses to start (exit 2) when --out's file system lacks the
    space. Re-running the same command after an interruption resumes from the committed segments.
    """
    from featstore.extract import extract as run, summary_dict
    from featstore.extract.estimate import parse_size

    cfg = _config(out, inputs, compression=compression, batch_tokens=batch_tokens, chunk_mb=chunk_mb,
                  io_threads=io_threads, hash=hash_name, encode_on=encode_on,
                  compute_dtype=compute_dtype, overwrite=overwrite, progress=not quiet,
                  storage_options=options(storage_option), space_check=not no_space_check,
                  free_space=parse_size(free_space) if free_space is not None else None)
    s = run(cfg)
    if s.rank:
        return  # under torchrun, rank 0 reports
    warn_unseen(s.unseen_labels)
    if as_json:
        click.echo(json.dumps(summary_dict(s), indent=1))
        return
    if s.already_complete:
        click.echo(f"{s.out}: already complete (fingerprint {s.fingerprint[:16]}); nothing to do")
        return
    resumed = f", {s.segments_resumed} resumed" if s.segments_resumed else ""
    click.echo(f"wrote {s.out}: {sum(s.examples.values()):,} examples "
               f"({', '.join(f'{k} {v:,}' for k, v in s.examples.items())}), {s.tokens:,} tokens, "
               f"{s.bytes_written / 2**20:.1f} MiB in {s.seconds:.1f} s "
               f"({s.tokens_per_second:,.0f} tokens/s on {s.device}); "
               f"{s.segments_total} segments{resumed}; {s.truncated} truncated; fingerprint {s.fingerprint[:16]}")
    if s.task_counts:  # token/span tasks: what truncation cost, per split
        click.echo("; ".join(f"{k}: " + ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in v.items())
                             for k, v in s.task_counts.items()))


def warn_unseen(unseen: dict[str, dict[str, dict[str, int]]]) -> None:
    """One line per label column holding labels that the training split lacks."""
    from featstore.extract.inputs import describe_unseen

    for column, labels in unseen.items():
        click.echo(f"warning: {column!r}: {len(labels)} label(s) absent from the training split kept in the "
                   f"vocabulary: {describe_unseen(labels)}; with no training examples a head cannot learn them, and "
                   "evaluation scores them as gold labels, errors when missed (--strict-labels refuses such data)",
                   err=True)


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@storage_options
@cache_dir
@user_errors
def info(store, as_json, storage_option, cache_dir) -> None:
    """Summarise STORE (a path or a URL): splits, examples, tokens, layers, dtype, bytes, model, fingerprint."""
    from featstore.verify import format_info, info as get_info

    d = get_info(store, storage_options=options(storage_option), cache_dir=cache_dir)
    click.echo(json.dumps(d, indent=1) if as_json else format_info(d))


@main.command()
@click.argument("store")
@click.option("--no-values", is_flag=True, help="Skip the finiteness scan of every value (checksums only).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--io-threads", default=None, type=click.IntRange(min=1),
              help="Files checksummed side by side (default: twice the cores, 2 to 8; 8 downloads for a URL).")
@storage_options
@cache_dir
@user_errors
def verify(store, no_values, quiet, io_threads, storage_option, cache_dir) -> None:
    """Check STORE: manifest complete, checksums, counts and offsets, all values finite. Exit 1 on any problem.

    STORE may be a URL: the published copy is verified in place (every file downloaded and checked)."""
    from featstore.verify import verify as run

    problems = run(store, check_values=not no_values, progress=not quiet, storage_options=options(storage_option),
                   cache_dir=cache_dir, io_threads=io_threads)
    if problems:
        for p in problems:
            click.echo(f"FAIL {p}", err=True)
        click.echo(f"{store}: {len(problems)} problem(s)", err=True)
        sys.exit(1)
    click.echo(f"{store}: OK (manifest complete, checksums, counts{'' if no_values else ', finite values'})")


@main.command()
@click.argument("store")
@click.argument("url")
@storage_options
@click.option("--jobs", default=8, show_default=True, type=int, help="Parallel transfers.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@user_errors(interrupted=RESUMABLE)
def push(store, url, storage_option, jobs, quiet, as_json) -> None:
    """Publish the local STORE at URL (s3://bucket/prefix/name, a shared path, any fsspec URL).

    Data files go first and the manifest last, so readers see the whole store or none. A published store is
    immutable: a different store at URL is refused, the same one is a no-op. Re-run to resume an interrupted push.
    Pushes racing for one URL: the name is claimed atomically, so exactly one store wins (the others exit 2);
    pushes of the same store all succeed.
    """
    from featstore.share import push as run

    r = run(store, url, options(storage_option), jobs=jobs, progress=not quiet)
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=1))
    elif r.already:
        click.echo(f"{r.dest}: already published (same fingerprint {r.fingerprint[:16]}); nothing to do")
    else:
        resumed = f", {r.resumed} already there" if r.resumed else ""
        click.echo(f"published {r.source} at {r.dest}: {r.transferred} files ({r.bytes / 2**20:.1f} MiB) sent"
                   f"{resumed} in {r.seconds:.1f} s; fingerprint {r.fingerprint[:16]}")


@main.command()
@click.argument("url")
@click.argument("dest")
@storage_options
@click.option("--jobs", default=8, show_default=True, type=int, help="Parallel transfers.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@user_errors(interrupted=RESUMABLE)
def pull(url, dest, storage_option, jobs, quiet, as_json) -> None:
    """Fetch the store published at URL into the local path DEST, every file checked against the manifest.

    Downloads go to a temporary directory next to DEST, which is renamed into place only when all files
    verify; re-run to resume an interrupted pull.
    """
    from featstore.share import pull as run

    r = run(url, dest, options(storage_option), jobs=jobs, progress=not quiet)
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=1))
    elif r.already:
        click.echo(f"{r.dest}: already holds this store (fingerprint {r.fingerprint[:16]}); nothing to do")
    else:
        resumed = f", {r.resumed} resumed" if r.resumed else ""
        click.echo(f"pulled {r.source} into {r.dest}: {r.transferred} files ({r.bytes / 2**20:.1f} MiB) verified"
                   f"{resumed} in {r.seconds:.1f} s; fingerprint {r.fingerprint[:16]}")


@main.command(name="ls")
@click.argument("prefix")
@storage_options
@click.option("--depth", default=4, show_default=True, type=int, help="How many directory levels to search.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def ls_cmd(prefix, storage_option, depth, as_json) -> None:
    """List the stores under PREFIX from their manifests alone: name, model, layers, splits, size, fingerprint, date."""
    from featstore.share import format_ls, ls

    entries, problems = ls(prefix, options(storage_option), max_depth=depth)
    for p in problems:
        click.echo(f"warning: skipped {p}", err=True)
    if as_json:
        click.echo(json.dumps(entries, indent=1))
    elif entries:
        click.echo(format_ls(entries))
    else:
        click.echo(f"no stores under {prefix}", err=True)


@main.command()
@click.argument("src")
@click.argument("dst")
@click.option("--encoding", default=None, type=click.Choice(list(ENCODINGS)),
              help="Encoding of the new store (8-bit: int8, fp8 = e4m3, with per-token scales). Default: SRC's.")
@click.option("--project", default=None, type=click.IntRange(min=1), metavar="N",
              help="Project each layer to N principal directions (PCA on a sample of SRC's training split).")
@click.option("--layers", default="all", show_default=True, help="Comma-separated layers of SRC to keep, or 'all'.")
@click.option("--format", "fmt", default=None, type=click.Choice(list(FORMATS)), help="Default: SRC's format.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at DST.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@storage_options
@cache_dir
@user_errors(interrupted=RESUMABLE)
def convert(src, dst, encoding, project, layers, fmt, overwrite, as_json, storage_option, cache_dir) -> None:
    """Re-encode, project or subset SRC (a path or URL) into a new local store DST, without the backbone.

    One segment at a time; re-running the same command after an interruption resumes. DST gets its own
    fingerprint (from SRC's and the transform) and records what it was derived from."""
    from dataclasses import asdict

    from featstore.convert import convert as run

    r = run(src, dst, encoding, layers, fmt, overwrite, storage_options=options(storage_option),
            cache_dir=cache_dir, project=project)
    if as_json:
        click.echo(json.dumps(asdict(r), indent=1))
    elif r.already_complete:
        click.echo(f"{dst}: already complete (fingerprint {r.fingerprint[:16]}); nothing to do")
    else:
        click.echo(f"wrote {dst}: {r.segments_total} segments ({r.segments_resumed} resumed), "
                   f"{r.bytes_written / 2**20:.1f} MiB in {r.seconds:.1f} s; fingerprint {r.fingerprint[:16]}")


@main.command()
@click.argument("store")
@click.argument("out_dir", metavar="DIR")
@click.option("--split", "splits", multiple=True, help="Split to export (repeatable; default: every split).")
@click.option("--layers", default="-1", show_default=True,
              help="Comma-separated stored layers, negative = from the top stored layer, or all.")
@click.option("--pooling", default="mean", show_default=True, type=click.Choice(["mean", "cls"]))
@click.option("--format", "fmt", default="parquet", show_default=True, type=click.Choice(["parquet", "arrow"]))
@click.option("--overwrite", is_flag=True, help="Replace exported files already in DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@storage_options
@cache_dir
@user_errors
def export(store, out_dir, splits, layers, pooling, fmt, overwrite, as_json, storage_option, cache_dir) -> None:
    """Write pooled vectors, ids, input rows and labels of STORE as DIR/<split>.parquet (or .arrow).

    `datasets.load_dataset("parquet", data_dir=DIR)`, pandas and polars open them; each file's metadata
    (key `featstore`) holds the store's fingerprint, layers, pooling and label names."""
    from dataclasses import asdict

    from featstore.export import export as run

    r = run(store, out_dir, list(splits) or None, layers, pooling, fmt, overwrite,
            storage_options=options(storage_option), cache_dir=cache_dir)
    if as_json:
        click.echo(json.dumps(asdict(r), indent=1))
        return
    click.echo(f"wrote {', '.join(r.files)}: {', '.join(f'{k} {v:,}' for k, v in r.examples.items())} examples, "
               f"layers {r.layers} ({pooling}), {r.bytes_written / 2**20:.1f} MiB; fingerprint {r.fingerprint[:16]}")


@main.command()
@input_options
@click.option("--sample", default=None, type=int, metavar="N",
              help="Tokenize N random rows per split and extrapolate, with a 95% error bar (default: every row).")
@click.option("--rate", default=None, type=float, metavar="TOKENS_PER_S",
              help="Extraction speed to state (e.g. a GPU's); default: measured by a short forward pass here.")
@click.option("--no-time", is_flag=True, help="Skip the time estimate (and loading the model's weights).")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
@user_errors
def estimate(sample, rate, no_time, as_json, **inputs) -> None:
    """Tokens, bytes and time an `extract` with these options would take, before running it.

    Tokens are counted on the real inputs; bytes are shown for the chosen encoding and its alternatives."""
    from featstore.extract.estimate import estimate as run, estimate_dict, format_estimate

    e = run(_config("", inputs), sample=sample, rate=rate, measure=not no_time)
    click.echo(json.dumps(estimate_dict(e), indent=1) if as_json else format_estimate(e))


@main.command(name="add-labels")
@click.argument("store")
@click.option("--data", "data", multiple=True, required=True, metavar="SPLIT=PATH",
              help="File with the new labels for SPLIT (CSV/TSV, JSONL, Parquet); one per split of the store.")
@click.option("--id-column", default="id", show_default=True, help="Column holding the store's example ids.")
@click.option("--label-column", required=True, metavar="NAME[:KIND] | NAME=COL,COL,...",
              help="The new label column: NAME[:class|:regression|:multilabel], or NAME=COL1,COL2,... to name 0/1 "
                   "columns together as one multi-label column.")
@click.option("--strict-labels", is_flag=True,
              help="Refuse a class or tag absent from the training split (by default: kept, counted, warned about).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@user_errors
def add_labels(store, data, id_column, label_column, strict_labels, as_json) -> None:
    """Attach a new label column to the local STORE, joined by example id; no re-extraction.

    Unmatched or duplicate ids are reported and refused. The fingerprint does not change.
    """
    from dataclasses import asdict

    from featstore.extract.inputs import parse_split_specs
    from featstore.labels import add_labels as run

    r = run(store, parse_split_specs(list(data)), label_column, id_column=id_column, strict_labels=strict_labels)
    warn_unseen({r.column: r.unseen} if r.unseen else {})
    if as_json:
        click.echo(json.dumps(asdict(r), indent=1))
        return
    what = {"class": f"{len(r.names or [])} classes", "multilabel": f"multi-label, {len(r.names or [])} labels",
            "token": f"{len(r.names or [])} tags"}.get(r.kind, r.kind)
    click.echo(f"{store}: added label column {r.column!r} ({what}) to "
               f"{', '.join(f'{k} {v:,}' for k, v in r.examples.items())} examples; "
               f"fingerprint unchanged ({r.fingerprint[:16]})")


if __name__ == "__main__":
    main()
