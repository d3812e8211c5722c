"""`featstore`: extract features once into a store; inspect and verify stores."""
from __future__ import annotations

import json
import sys

import click

from featstore import __version__

from .common import user_errors

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(context_settings=CONTEXT)
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
@click.option("--dtype", default="float16", show_default=True, type=click.Choice(["float16", "bfloat16", "float32"]),
              help="Stored dtype.")
@click.option("--format", "fmt", default="zarr", show_default=True, type=click.Choice(["zarr", "hdf5"]))
@click.option("--compression", default="none", show_default=True,
              help="zarr: none|zstd|blosc-zstd|blosc-lz4; hdf5: none|lzf|gzip.")
@click.option("--batch-tokens", default=16384, show_default=True, type=int, help="Padded tokens per forward batch.")
@click.option("--segment-mb", default=256.0, show_default=True, type=float, help="Target segment size (unit of resume).")
@click.option("--chunk-mb", default=4.0, show_default=True, type=float, help="Target chunk size.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--compute-dtype", default="auto", show_default=True,
              help="Model dtype for the forward pass (auto: bfloat16 on CUDA, float32 on CPU).")
@click.option("--out", required=True, help="Store path: a directory (zarr) or a .h5 file (hdf5).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@user_errors
def extract(model, data, text_column, text_pair_column, label_columns, id_column, layers, max_length, truncation,
            dtype, fmt, compression, batch_tokens, segment_mb, chunk_mb, device, compute_dtype, out, overwrite,
            quiet, as_json) -> None:
    """Run the frozen MODEL once over every split and write the chosen layers to a store.

    Re-running the same command after an interruption resumes from the committed segments.
    """
    from featstore.data import parse_split_specs
    from featstore.extract import ExtractConfig, extract as run, summary_dict

    cfg = ExtractConfig(model=model, data=parse_split_specs(list(data)), out=out, text_column=text_column,
                        pair_column=text_pair_column, label_columns=list(label_columns), id_column=id_column,
                        layers=layers, max_length=max_length, truncation=truncation, dtype=dtype, format=fmt,
                        compression=compression, batch_tokens=batch_tokens, segment_mb=segment_mb,
                        chunk_mb=chunk_mb, device=device, compute_dtype=compute_dtype, overwrite=overwrite,
                        progress=not quiet)
    s = run(cfg)
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


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def info(store, as_json) -> None:
    """Summarise STORE: splits, examples, tokens, layers, dtype, bytes, model, fingerprint, completeness."""
    from featstore.verify import format_info, info as get_info

    d = get_info(store)
    click.echo(json.dumps(d, indent=1) if as_json else format_info(d))


@main.command()
@click.argument("store")
@click.option("--no-values", is_flag=True, help="Skip the finiteness scan of every value (checksums only).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def verify(store, no_values, quiet) -> None:
    """Check STORE: manifest complete, checksums, counts and offsets, all values finite. Exit 1 on any problem."""
    from featstore.verify import verify as run

    problems = run(store, check_values=not no_values, progress=not quiet)
    if problems:
        for p in problems:
            click.echo(f"FAIL {p}", err=True)
        click.echo(f"{store}: {len(problems)} problem(s)", err=True)
        sys.exit(1)
    click.echo(f"{store}: OK (manifest complete, checksums, counts{'' if no_values else ', finite values'})")


if __name__ == "__main__":
    main()
