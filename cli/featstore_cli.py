"""`featstore`: extract features once into a store; inspect and verify stores."""
from __future__ import annotations

import json
import sys

import click

from featstore import __version__
from featstore.store import FORMATS, compressions
from featstore.store.encoding import ENCODINGS

from .common import OneLineErrors, RESUMABLE, user_errors

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(cls=OneLineErrors, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="featstore")
def main() -> None:
    """Compute a frozen encoder's hidden states once; reuse them for every head, seed and teammate."""


@main.command()
@click.option("--model", required=True, help="Hub id, alias (deberta-v2-xxlarge, roberta-large, ...) or local dir.")
@click.option("--data", "data", multiple=True, required=True, metavar="SPLIT=PATH",
              help="Input split: CSV/TSV, JSONL, Parquet or a datasets directory. Repeat per split.")
@click.option("--text-column", default="text", show_default=True)
@click.option("--text-pair-column", default=None, help="Second text of a pair (e.g. sentence2).")
@click.option("--label-column", "label_columns", multiple=True, metavar="NAME[:class|:regression]",
              help="Target column; repeatable. Text/integer labels are classes, fractional numbers regression.")
@click.option("--id-column", default=None, help="Unique example id column (default: SPLIT-ROW).")
@click.option("--layers", default="-1", show_default=True,
              help="Comma-separated layer indices (negative count from the top, 0 = embeddings) or 'all'.")
@click.option("--max-length", default=None, type=int,
              help="Tokens per input; longer ones are truncated (default: the model's limit, at most 512).")
@click.option("--truncation", default="longest_first", show_default=True,
              type=click.Choice(["longest_first", "only_first", "only_second"]))
@click.option("--dtype", default=None, type=click.Choice(["float16", "bfloat16", "float32"]),
              help="Stored float dtype (default float16); the same as --encoding with a float name.")
@click.option("--encoding", default=None, type=click.Choice(list(ENCODINGS)),
              help="How values are stored: a float dtype, or 8-bit codes (int8, fp8 = e4m3) with per-token scales "
                   "after a per-channel standardisation; readers decode them to float32. Default: --dtype.")
@click.option("--project", default=None, type=click.IntRange(min=1), metavar="N",
              help="Keep N principal directions per layer (PCA fitted on a sample of the training split, kept in "
                   "the store, applied on the device; label-name features too).")
@click.option("--format", "fmt", default=FORMATS[0], show_default=True, type=click.Choice(list(FORMATS)))
@click.option("--compression", default="none", show_default=True,
              help="; ".join(f"{f}: {'|'.join(compressions(f))}" for f in FORMATS) + ".")
@click.option("--batch-tokens", default=16384, show_default=True, type=int, help="Padded tokens per forward batch.")
@click.option("--segment-mb", default=256.0, show_default=True, type=float, help="Target segment size (unit of resume).")
@click.option("--chunk-mb", default=4.0, show_default=True, type=float, help="Target chunk size.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--compute-dtype", default="auto", show_default=True,
              help="Model dtype for the forward pass (auto: bfloat16 on CUDA, float32 on CPU).")
@click.option("--out", required=True,
              help="Store path: a directory (zarr) or a .h5 file (hdf5); or an fsspec URL (s3://..., zarr): each "
                   "rank uploads its committed segments, the manifest last.")
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
              help="fsspec option when --out is a URL (repeatable; as for push).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out.")
@click.option("--allow-empty-text", is_flag=True,
              help="Keep empty or whitespace-only texts (refused by default: they are almost always a data bug).")
@click.option("--task", default="sentence", show_default=True, type=click.Choice(["sentence", "token", "span"]),
              help="token: a tag per word (CoNLL files, or JSONL/Parquet list columns); span: extractive QA "
                   "(SQuAD JSON v1.1/v2, or JSONL with context, question, answers).")
@click.option("--tokens-column", default="tokens", show_default=True, help="Token task, JSONL/Parquet: the words.")
@click.option("--tags-column", default="tags", show_default=True, help="Token task, JSONL/Parquet: the tags.")
@click.option("--tag-scheme", default="auto", show_default=True, type=click.Choice(["auto", "IOB2", "IOBES", "none"]),
              help="Entity scheme of the tags (IOB2 = BIO); none for plain tag sets such as POS.")
@click.option("--repair-tags", is_flag=True, help="Start an entity at an I- tag without its B- instead of refusing.")
@click.option("--repair-answers", is_flag=True,
              help="Span task: move an answer whose text is not at its answer_start to the nearest place it occurs.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@user_errors(interrupted=RESUMABLE)
def extract(model, data, text_column, text_pair_column, label_columns, id_column, layers, max_length, truncation,
            dtype, encoding, project, fmt, compression, batch_tokens, segment_mb, chunk_mb, device, compute_dtype, out,
            overwrite, allow_empty_text, task, tokens_column, tags_column, tag_scheme, repair_tags, repair_answers, quiet,
            as_json, storage_option) -> None:
    """Run the frozen MODEL once over every split and write the chosen layers to a store.

    Re-running the same command after an interruption resumes from the committed segments.
    """
    from featstore.extract.inputs import parse_split_specs
    from featstore.extract import ExtractConfig, extract as run, summary_dict

    cfg = ExtractConfig(model=model, data=parse_split_specs(list(data)), out=out, text_column=text_column,
                        pair_column=text_pair_column, label_columns=list(label_columns), id_column=id_column,
                        layers=layers, max_length=max_length, truncation=truncation, dtype=dtype, encoding=encoding,
                        project=project, format=fmt,
                        compression=compression, batch_tokens=batch_tokens, segment_mb=segment_mb,
                        chunk_mb=chunk_mb, device=device, compute_dtype=compute_dtype, overwrite=overwrite,
                        allow_empty_text=allow_empty_text, progress=not quiet,
                        storage_options=_options(storage_option), task=task,
                        tokens_column=tokens_column, tags_column=tags_column, tag_scheme=tag_scheme,
                        repair_tags=repair_tags, repair_answers=repair_answers)
    s = run(cfg)
    if s.rank:
        return  # under torchrun, rank 0 reports
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


def storage_options(fn):
    """--storage-option KEY=VALUE (repeatable) for commands that take a URL."""
    return click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
                        help="fsspec option for a URL (repeatable; JSON values, dotted keys nest), e.g. "
                             "client_kwargs.endpoint_url=http://localhost:9000 or anon=true.")(fn)


def cache_dir(fn):
    return click.option("--cache-dir", default=None, metavar="DIR",
                        help="Local cache for stores read from a URL (default: $FEATSTORE_CACHE_DIR or the user "
                             "cache directory; bound: $FEATSTORE_CACHE_MAX_GB, default 50).")(fn)


def _options(pairs) -> dict:
    from featstore.io.transport import parse_storage_options

    return parse_storage_options(pairs)


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@storage_options
@cache_dir
@user_errors
def info(store, as_json, storage_option, cache_dir) -> None:
    """Summarise STORE (a path or a URL): splits, examples, tokens, layers, dtype, bytes, model, fingerprint."""
    from featstore.verify import format_info, info as get_info

    d = get_info(store, storage_options=_options(storage_option), cache_dir=cache_dir)
    click.echo(json.dumps(d, indent=1) if as_json else format_info(d))


@main.command()
@click.argument("store")
@click.option("--no-values", is_flag=True, help="Skip the finiteness scan of every value (checksums only).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@storage_options
@cache_dir
@user_errors
def verify(store, no_values, quiet, storage_option, cache_dir) -> None:
    """Check STORE: manifest complete, checksums, counts and offsets, all values finite. Exit 1 on any problem.

    STORE may be a URL: the published copy is verified in place (every file downloaded and checked)."""
    from featstore.verify import verify as run

    problems = run(store, check_values=not no_values, progress=not quiet, storage_options=_options(storage_option),
                   cache_dir=cache_dir)
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

    r = run(store, url, _options(storage_option), jobs=jobs, progress=not quiet)
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

    r = run(url, dest, _options(storage_option), jobs=jobs, progress=not quiet)
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

    entries, problems = ls(prefix, _options(storage_option), max_depth=depth)
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
@click.option("--encoding", required=True, type=click.Choice(list(ENCODINGS)),
              help="Encoding of the new store (8-bit: int8, fp8 = e4m3, with per-token scales).")
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
    """Re-encode or subset SRC (a path or URL) into a new local store DST, without the backbone.

    One segment at a time; re-running the same command after an interruption resumes. DST gets its own
    fingerprint (from SRC's and the transform) and records what it was derived from."""
    from dataclasses import asdict

    from featstore.convert import convert as run

    r = run(src, dst, encoding, layers, fmt, overwrite, storage_options=_options(storage_option),
            cache_dir=cache_dir, project=project)
    if as_json:
        click.echo(json.dumps(asdict(r), indent=1))
    elif r.already_complete:
        click.echo(f"{dst}: already complete (fingerprint {r.fingerprint[:16]}); nothing to do")
    else:
        click.echo(f"wrote {dst}: {r.segments_total} segments ({r.segments_resumed} resumed), "
                   f"{r.bytes_written / 2**20:.1f} MiB in {r.seconds:.1f} s; fingerprint {r.fingerprint[:16]}")


@main.command(name="add-labels")
@click.argument("store")
@click.option("--data", "data", multiple=True, required=True, metavar="SPLIT=PATH",
              help="File with the new labels for SPLIT (CSV/TSV, JSONL, Parquet); one per split of the store.")
@click.option("--id-column", default="id", show_default=True, help="Column holding the store's example ids.")
@click.option("--label-column", required=True, metavar="NAME[:class|:regression]", help="The new label column.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@user_errors
def add_labels(store, data, id_column, label_column, as_json) -> None:
    """Attach a new label column to the local STORE, joined by example id; no re-extraction.

    Unmatched or duplicate ids are reported and refused. The fingerprint does not change.
    """
    from dataclasses import asdict

    from featstore.extract.inputs import parse_split_specs
    from featstore.labels import add_labels as run

    r = run(store, parse_split_specs(list(data)), label_column, id_column=id_column)
    if as_json:
        click.echo(json.dumps(asdict(r), indent=1))
        return
    what = f"{len(r.names)} classes" if r.kind == "class" else "regression"
    click.echo(f"{store}: added label column {r.column!r} ({what}) to "
               f"{', '.join(f'{k} {v:,}' for k, v in r.examples.items())} examples; "
               f"fingerprint unchanged ({r.fingerprint[:16]})")


if __name__ == "__main__":
    main()
