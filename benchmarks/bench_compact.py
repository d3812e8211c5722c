"""Compact stores: bytes per token, extraction and conversion throughput, seconds per epoch (in RAM and
streamed) and head accuracy per encoding and projection, side by side in one run.

Every variant starts from the same float16 store of a task (extracted once with the packaged MiniLM, all 6
layers), made by `featstore convert` (8-bit codes, projections to D/2 and D/4, each with and without int8).
Extraction throughput is measured separately for each encoding on one split, one after the other in the same
run. Heads: Y-Tuning (label-prior init, all layers, as `make demo`) and a linear probe (mean pooling, last layer),
the same seeds for every variant; dev selects, test is reported (mean +- std over seeds).

    python benchmarks/bench_compact.py --work bench_out/compact --tasks bbc,bbc-title --json benchmarks/results/compact.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from featstore.convert import convert  # noqa: E402
from featstore.extract import ExtractConfig, extract  # noqa: E402
from featstore.verify import info  # noqa: E402
from heads import TrainConfig, train  # noqa: E402

TASKS = {"bbc": dict(text="full", max_length=256), "bbc-title": dict(text="title", max_length=64)}
MODEL = "all-minilm-l6-v2"
HIDDEN = 384


def variants() -> list[tuple[str, str, int | None]]:
    """(name, encoding, projected width)."""
    out = [("float16", "float16", None), ("int8", "int8", None), ("fp8", "fp8", None)]
    for w in (HIDDEN // 2, HIDDEN // 4):
        out += [(f"pca{w}", "float16", w), (f"pca{w}+int8", "int8", w)]
    return out


def run_task(task: str, work: str, seeds: list[int], epochs: int, encodings_for_extract: list[str],
             only: list[str] | None = None) -> dict:
    from bbc import make_splits

    tdir = os.path.join(work, task)
    data = make_splits(os.path.join(tdir, "data"), text=TASKS[task]["text"])
    common = dict(model=MODEL, data=data, id_column="id", text_column="text", label_columns=["topic"], layers="all",
                  max_length=TASKS[task]["max_length"], progress=False)
    base = os.path.join(tdir, "float16")
    t0 = time.perf_counter()
    s = extract(ExtractConfig(out=base, **common))
    print(f"[{task}] base store: {s.tokens:,} tokens in {time.perf_counter() - t0:.0f} s", flush=True)

    # extraction throughput per encoding: the validation split alone, one encoding after the other
    extraction = {}
    for enc in encodings_for_extract:
        cfg = dict(common, data={"validation": data["validation"]})
        out = os.path.join(tdir, f"extract-{enc}")
        r = extract(ExtractConfig(out=out, encoding=enc, overwrite=True, **cfg))
        extraction[enc] = r.tokens / r.loop_seconds
        print(f"[{task}] extract {enc}: {extraction[enc]:,.0f} tokens/s (forward + write)", flush=True)

    with __import__("featstore").open_store(base) as st:
        n_tokens = sum(st.split(n).n_tokens for n in st.splits)
    rows = []
    for name, enc, width in variants():
        if only and name not in only:
            continue
        store = base
        convert_rate = None
        if name != "float16":
            store = os.path.join(tdir, name)
            t0 = time.perf_counter()
            convert(base, store, enc, project=width, overwrite=True)
            convert_rate = n_tokens / (time.perf_counter() - t0)
        d = info(store)
        row = {"variant": name, "encoding": enc, "width": width or HIDDEN, "bytes_per_token": d["bytes_per_token"],
               "store_bytes": d["bytes"], "convert_tokens_per_s": convert_rate,
               "extract_tokens_per_s": extraction.get(name)}
        for head, extra in (("ytuning", {"label_init": "prior", "layers": "all"}),
                            ("linear", {"layers": "-1", "pooling": "mean"})):
            r = train(TrainConfig(head, store=store, label_column="topic", out=os.path.join(tdir, f"{name}-{head}"),
                                  seeds=seeds, epochs=epochs, progress=False, overwrite=True, **extra))
            acc = r.summary["test"]["accuracy"]
            row[head] = {"mean": acc["mean"], "std": acc["std"], "seconds_per_epoch": r.seconds_per_epoch,
                         "in_ram": r.in_ram}
        # a streamed epoch: nothing held in RAM, every batch read (and decoded) from the store
        r = train(TrainConfig("ytuning", store=store, label_column="topic", out=os.path.join(tdir, f"{name}-stream"),
                              seeds=[seeds[0]], epochs=1, patience=None, max_memory=0, progress=False, overwrite=True,
                              label_init="prior", layers="all"))
        row["streamed_seconds_per_epoch"] = r.seconds_per_epoch
        rows.append(row)
        print(f"[{task}] {name}: {json.dumps(row)}", flush=True)
    return {"tokens": n_tokens, "rows": rows}


def read_pass_seconds(store: str, split: str = "train", batch_size: int = 32) -> float:
    """One streamed pass over a split's token features, all layers, as training reads them (store read, batch
    assembly, `to_device` with 8-bit codes decoded there), without a head: what the encoding changes."""
    import torch

    import featstore
    from heads.data import Features, Loader
    from heads.runtime import to_device

    with featstore.open_store(store) as st:
        src = Features.from_split(st.split(split), "tokens", st.layers, in_ram=False)
        t0 = time.perf_counter()
        for batch in Loader(src, None, batch_size, shuffle=True, seed=0).epoch(1):
            to_device(batch, torch.device("cpu"))
        return time.perf_counter() - t0


def timing_task(task: str, work: str, repeats: int, names: list[str], extract_variants: list[str]) -> dict:
    """Timing only, medians of `repeats` rounds; inside a round every variant runs once, one after the other, so
    a change in the machine's load touches all of them alike. Per variant: tokens/s of converting the float16
    store into it (every split, no model), a streamed read pass (no head), a streamed and an in-RAM Y-Tuning epoch
    (1 epoch, seed 0); per extraction variant: tokens/s of extracting the validation split (forward +
    coding/projection + write)."""
    import statistics

    from bbc import make_splits

    tdir = os.path.join(work, task)
    data = make_splits(os.path.join(tdir, "data"), text=TASKS[task]["text"])
    common = dict(model=MODEL, data=data, id_column="id", text_column="text", label_columns=["topic"], layers="all",
                  max_length=TASKS[task]["max_length"], progress=False)
    base = os.path.join(tdir, "float16")
    extract(ExtractConfig(out=base, **common))  # a complete store with the same settings is kept as it is
    with __import__("featstore").open_store(base) as st:
        n_tokens = sum(st.split(n).n_tokens for n in st.splits)
    stores = {name: base if name == "float16" else os.path.join(tdir, name) for name, _, _ in variants()
              if name in names}
    spec = {name: (enc, width) for name, enc, width in variants()}
    runs: dict[str, dict[str, list[float]]] = {n: {"convert": [], "read": [], "stream": [], "ram": []}
                                               for n in stores}
    ext: dict[str, list[float]] = {n: [] for n in extract_variants}  # forward + coding/projection + write loop
    ext_all: dict[str, list[float]] = {n: [] for n in extract_variants}  # end to end: + model load, PCA fit, hashes
    for rnd in range(repeats):
        for name, store in stores.items():
            if name != "float16":  # the variant's store is (re)written here, then read by what follows
                enc, width = spec[name]
                t0 = time.perf_counter()
                convert(base, store, enc, project=width, overwrite=True)
                runs[name]["convert"].append(n_tokens / (time.perf_counter() - t0))
            runs[name]["read"].append(read_pass_seconds(store))
            for key, mem in (("stream", 0), ("ram", None)):
                r = train(TrainConfig("ytuning", store=store, label_column="topic", seeds=[0], epochs=1,
                                      out=os.path.join(tdir, "timing-run"), patience=None, max_memory=mem,
                                      progress=False, overwrite=True, label_init="prior", layers="all"))
                runs[name][key].append(r.seconds_per_epoch)
        for name in extract_variants:
            enc, width = spec[name]
            r = extract(ExtractConfig(out=os.path.join(tdir, f"extract-{name}"), encoding=enc, project=width,
                                      overwrite=True, **dict(common, data={"validation": data["validation"]})))
            ext[name].append(r.tokens / r.loop_seconds)
            ext_all[name].append(r.tokens / r.seconds)
        last = {n: {k: round(v[-1], 3) for k, v in d.items() if v} for n, d in runs.items()}
        print(f"[{task}] timing round {rnd + 1}/{repeats}: {json.dumps(last)}", flush=True)
    med = statistics.median
    return {"repeats": repeats,
            "tokens": n_tokens,
            "rows": [{"variant": n, "convert_tokens_per_s": med(d["convert"]) if d["convert"] else None,
                      "read_pass_seconds": med(d["read"]),
                      "streamed_seconds_per_epoch": med(d["stream"]), "ram_seconds_per_epoch": med(d["ram"]),
                      "extract_tokens_per_s": med(ext[n]) if n in ext else None,
                      "extract_end_to_end_tokens_per_s": med(ext_all[n]) if n in ext else None,
                      "raw": {**d, "extract": ext.get(n), "extract_end_to_end": ext_all.get(n)}} for n, d in runs.items()]}


def timing_table(task: str, res: dict) -> str:
    rows = res["rows"]
    base = rows[0]
    lines = [f"**{task}**, timing (medians of {res['repeats']} interleaved rounds)", "",
             "| variant | convert tok/s | streamed read pass s (x float16) | streamed Y-Tuning epoch s (x float16) "
             "| in-RAM epoch s | extract loop tok/s (x float16) | extract end to end tok/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ext = "-" if r["extract_tokens_per_s"] is None else \
            f"{r['extract_tokens_per_s']:,.0f} ({r['extract_tokens_per_s'] / base['extract_tokens_per_s']:.2f}x)"
        read, stream = r["read_pass_seconds"], r["streamed_seconds_per_epoch"]
        lines.append(f"| {r['variant']} | {_n(r.get('convert_tokens_per_s'))} "
                     f"| {read:.2f} ({read / base['read_pass_seconds']:.2f}x) "
                     f"| {stream:.2f} ({stream / base['streamed_seconds_per_epoch']:.2f}x) "
                     f"| {r['ram_seconds_per_epoch']:.2f} | {ext} | {_n(r['extract_end_to_end_tokens_per_s'])} |")
    return "\n".join(lines)


def table(task: str, res: dict) -> str:
    rows = res["rows"]
    base = rows[0]
    lines = [f"**{task}** ({res['tokens']:,} tokens)", "",
             "| variant | bytes/token | x float16 | store | extract tok/s | convert tok/s | Y-Tuning s/epoch RAM / streamed "
             "| Y-Tuning test acc | linear test acc |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        y, lin = r["ytuning"], r["linear"]
        lines.append(
            f"| {r['variant']} | {r['bytes_per_token']:,} | {r['bytes_per_token'] / base['bytes_per_token']:.3f} | "
            f"{r['store_bytes'] / 2**20:,.0f} MiB | {_n(r['extract_tokens_per_s'])} | {_n(r['convert_tokens_per_s'])} | "
            f"{y['seconds_per_epoch']:.2f} / {r['streamed_seconds_per_epoch']:.2f} | "
            f"{100 * y['mean']:.2f} +- {100 * y['std']:.2f} | {100 * lin['mean']:.2f} +- {100 * lin['std']:.2f} |")
    return "\n".join(lines)


# GLUE training sets: examples and a rough mean of DeBERTa-v2 tokens per example (pairs joined); an estimate
# to size stores, not a measurement.
GLUE_TRAIN = {"MNLI": (392_702, 41), "QQP": (363_846, 30), "QNLI": (104_743, 50), "SST-2": (67_349, 13),
              "CoLA": (8_551, 11), "STS-B": (5_749, 31), "MRPC": (3_668, 53), "RTE": (2_490, 70)}


def glue_estimate(hidden: int = 1536, layers: int = 4) -> str:
    """Store sizes for DeBERTa-v2-xxlarge (hidden 1536), `layers` kept layers, per GLUE training set: token
    features (value bytes + the 4-byte row scale of 8-bit codes) plus the two pooled vectors per example."""
    variants = [("float16", 2 * hidden, 0), ("int8 / fp8", hidden, 4), (f"pca{hidden // 2} float16", hidden, 0),
                (f"pca{hidden // 2} + int8", hidden // 2, 4), (f"pca{hidden // 4} float16", hidden // 2, 0),
                (f"pca{hidden // 4} + int8", hidden // 4, 4)]
    head = "| task | examples | tokens (est.) | " + " | ".join(v[0] for v in variants) + " |"
    lines = [head, "|" + "---|" * (3 + len(variants))]
    for task, (n, per) in GLUE_TRAIN.items():
        tokens = n * per
        sizes = [layers * ((tokens + 2 * n) * (b + extra)) for _, b, extra in variants]
        lines.append(f"| {task} | {n:,} | {tokens / 1e6:.1f} M | " + " | ".join(_gb(x) for x in sizes) + " |")
    return "\n".join(lines)


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f} GB" if x >= 1e9 else f"{x / 1e6:.0f} MB"


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="bench_out/compact")
    ap.add_argument("--tasks", default="bbc,bbc-title")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--extract-encodings", default="float16,int8,fp8", help="'' to skip extraction throughput")
    ap.add_argument("--variants", default=None, help="only these variants (e.g. pca192,pca96+int8); with --json, "
                    "their rows are added to the file's rows of the same task")
    ap.add_argument("--timing", type=int, default=0, metavar="ROUNDS",
                    help="timing only (no accuracy): medians of ROUNDS interleaved rounds of read pass, streamed and "
                         "in-RAM epoch per variant and extraction per --extract-variants; written under 'timing'")
    ap.add_argument("--extract-variants", default="float16,int8,fp8,pca96+int8",
                    help="with --timing: the variants whose extraction throughput is measured")
    ap.add_argument("--json", default=None)
    ap.add_argument("--report", default=None, help="print the tables of an earlier --json and exit")
    ap.add_argument("--estimate-glue", action="store_true", help="print estimated DeBERTa-v2-xxlarge store sizes "
                    "for the GLUE training sets per encoding (4 layers) and exit")
    a = ap.parse_args()
    if a.estimate_glue:
        print(glue_estimate())
        return
    if a.report:
        res = json.load(open(a.report))
        print("\n\n".join([table(t, r) for t, r in res["tasks"].items()]
                            + [timing_table(t, r) for t, r in res.get("timing", {}).items()]))
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if a.timing:
        names = a.variants.split(",") if a.variants else [v[0] for v in variants()]
        ext = [e for e in a.extract_variants.split(",") if e]
        if "float16" not in names or (ext and ext[0] != "float16"):
            raise SystemExit("--timing compares with float16: list it first in --variants and --extract-variants")
        res = json.load(open(a.json)) if a.json and os.path.isfile(a.json) else {"tasks": {}}
        res.setdefault("timing", {})
        for task in a.tasks.split(","):
            got = timing_task(task, a.work, a.timing, names, ext)
            old = res["timing"].get(task, {}).get("rows", [])  # rows of other variants, from an earlier run
            got["rows"] = [r for r in old if r["variant"] not in names and r["variant"] != "float16"] + got["rows"]
            order = [v[0] for v in variants()]
            got["rows"].sort(key=lambda r: order.index(r["variant"]))
            res["timing"][task] = {**got, "machine": f"{os.cpu_count()} CPU cores" + (", GPU" if _cuda() else ", no GPU")}
            if a.json:
                json.dump(res, open(a.json, "w"), indent=1)
            print(timing_table(task, res["timing"][task]))
        return
    seeds = [int(s) for s in a.seeds.split(",")]
    t0 = time.perf_counter()
    res = {"machine": f"{os.cpu_count()} CPU cores, no GPU" if not _cuda() else "GPU", "model": MODEL,
           "seeds": seeds, "epochs": a.epochs, "tasks": {}}
    only = a.variants.split(",") if a.variants else None
    if only and a.json and os.path.isfile(a.json):
        res = json.load(open(a.json))  # add rows to an earlier run (same settings)
    for task in a.tasks.split(","):
        got = run_task(task, a.work, seeds, a.epochs, [e for e in a.extract_encodings.split(",") if e], only)
        if only and task in res["tasks"]:
            kept = [r for r in res["tasks"][task]["rows"] if r["variant"] not in only]
            order = [v[0] for v in variants()]
            got["rows"] = sorted(kept + got["rows"], key=lambda r: order.index(r["variant"]))
        res["tasks"][task] = {**res["tasks"].get(task, {}), **got}
        if {r["variant"] for r in res["tasks"][task]["rows"]} == {v[0] for v in variants()}:
            res["tasks"][task].pop("partial", None)  # every variant measured now
        if a.json:  # written as it goes: a long run keeps what it measured
            os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
            json.dump(res, open(a.json, "w"), indent=1)
    res["seconds"] = time.perf_counter() - t0
    if a.json:
        json.dump(res, open(a.json, "w"), indent=1)
    print("\n\n".join(table(t, r) for t, r in res["tasks"].items()))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
