"""Token classification and extractive QA: full fine-tuning of the backbone beside heads trained from the store.

    python benchmarks/vs_finetune_tasks.py --task token --model all-minilm-l6-v2 --data train=wnut/train.conll \\
        --data validation=wnut/validation.conll --data test=wnut/test.conll --max-length 128 \\
        --runs ytuning=runs/wnut-ytuning --runs linear=runs/wnut-linear --out benchmarks/results/wnut.json

Fine-tuning uses the same inputs, tokenization and first-sub-word alignment as `featstore extract --task` (the
same `tokenize_task`), the same decoding and metrics as `heads` (`TokenTagging` / `SpanExtraction` decode and score), and the same
protocol: the dev split picks the epoch, the test split is scored once. Backbone + one linear layer on the last
hidden state (a logit per tag per token, or start/end per position), all weights trained with AdamW.
Heads' numbers are read from their runs (metrics.json, head.json): nothing is re-trained for them.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from torch import nn

from featstore.extract.inputs import parse_split_specs
from featstore.extract.models import load_model
from featstore.extract.plan import pad_batch
from featstore.extract.tasks import gold_records, load_span_dataset, load_token_dataset, tokenize_task
from featstore.extract.tasks import IGNORE
from heads.tasks.positions import Alignment, PositionTask
from heads.tasks.span import SpanExtraction
from heads.tasks.token import TokenTagging


class TaskModel(nn.Module):
    def __init__(self, backbone, n_out: int):
        super().__init__()
        self.backbone = backbone
        self.out = nn.Linear(backbone.config.hidden_size, n_out)

    def forward(self, ids, mask, types):
        kw = {"token_type_ids": types} if types is not None else {}
        return self.out(self.backbone(input_ids=ids, attention_mask=mask, **kw).last_hidden_state)  # (B, T, Y)


def batch(tok, rows, device):
    ids, mask = pad_batch([tok.input_ids[r] for r in rows])
    types = pad_batch([tok.token_type_ids[r] for r in rows])[0].to(device) if tok.token_type_ids else None
    return ids.to(device), mask.to(device), types


def evaluate(model, task: PositionTask, tok, align: Alignment, bs: int, device) -> dict[str, float]:
    model.eval()
    logits = []
    with torch.no_grad():
        for a in range(0, len(tok.input_ids), bs):
            rows = list(range(a, min(a + bs, len(tok.input_ids))))
            ids, mask, types = batch(tok, rows, device)
            out = model(ids, mask, types).float().cpu().numpy()
            logits += [out[b, :int(mask[b].sum())] for b in range(len(rows))]
    return task.score(task.decode(logits, align), align)


def finetune(a: argparse.Namespace) -> dict:
    data = parse_split_specs(a.data)
    ds, info = load_token_dataset(data) if a.task == "token" else load_span_dataset(data, repair=True)
    lm = load_model(a.model, device="cpu", dtype="float32")
    trunc = "longest_first" if a.task == "token" else "only_second"
    toks = {n: tokenize_task(lm.tokenizer, s, info, a.max_length, trunc) for n, s in ds.splits.items()}
    aligns = {}
    for n, s in ds.splits.items():
        t = toks[n]
        aligns[n] = Alignment(offsets=np.concatenate([[0], np.cumsum(t.lengths)]),
                              **{k: np.concatenate(t.extra[k]).astype(np.int64) for k in ("word_index", "char_start",
                                                                                          "char_end")},
                              gold=gold_records(s, info))
    null = any(not x for s in ds.splits.values() for x in s.extra.get("answers", [[1]]))
    task = TokenTagging(info.tag_names, info.scheme) if a.task == "token" else SpanExtraction(null)
    torch.manual_seed(a.seed)
    model = TaskModel(lm.model, task.n_outputs)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    train, targets = toks["train"], ds.splits["train"].extra["targets"]
    rng = np.random.default_rng(a.seed)
    best, best_state, per_epoch, log = None, None, [], []
    for epoch in range(1, a.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        order = rng.permutation(len(train.input_ids))
        for s in range(0, len(order), a.batch_size):
            rows = order[s:s + a.batch_size].tolist()
            ids, mask, types = batch(train, rows, "cpu")
            if a.task == "token":
                y = torch.full(ids.shape, IGNORE, dtype=torch.long)
                for b, r in enumerate(rows):
                    y[b, :len(targets[r])] = torch.as_tensor(targets[r])
            else:
                y = torch.as_tensor(np.stack([targets[r] for r in rows]))
            loss = task.loss(model(ids, mask, types), y, mask.bool(), None)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        per_epoch.append(time.perf_counter() - t0)
        dev = evaluate(model, task, toks["validation"], aligns["validation"], 64, "cpu")
        log.append({"epoch": epoch, "dev": dev, "seconds": per_epoch[-1]})
        print(json.dumps(log[-1]), flush=True)
        if best is None or dev[task.primary] > best:
            best, best_state = dev[task.primary], {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    test = evaluate(model, task, toks["test"], aligns["test"], 64, "cpu")
    return {"method": "finetune", "primary": task.primary, "test": test, "log": log,
            "trainable_parameters": sum(p.numel() for p in model.parameters()),
            "seconds_per_epoch": float(np.mean(per_epoch))}


def head_row(name: str, run: str) -> dict:
    with open(os.path.join(run, "head.json")) as f:
        meta = json.load(f)
    with open(os.path.join(run, "metrics.json")) as f:
        m = json.load(f)
    test = {k: v["mean"] for k, v in m["summary"][meta["splits"]["test"]].items()}
    return {"method": name, "primary": meta["primary_metric"], "test": test,
            "trainable_parameters": meta["trainable_parameters"], "seconds_per_epoch": meta["seconds_per_epoch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["token", "span"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--runs", action="append", default=[], help="NAME=RUN_DIR of a head trained on the same splits")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    rows = [finetune(a)] + [head_row(*r.split("=", 1)) for r in a.runs]
    ft = rows[0]["test"][rows[0]["primary"]]
    print(f"\n{'method':<12}{'metric':>10}{'test':>10}{'% of FT':>10}{'trainable':>14}{'s/epoch':>10}")
    for r in rows:
        v = r["test"][r["primary"]]
        print(f"{r['method']:<12}{r['primary']:>10}{v:>10.4f}{100 * v / ft if ft else float('nan'):>9.1f}%"
              f"{r['trainable_parameters']:>14,}{r['seconds_per_epoch']:>10.1f}")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"task": a.task, "model": a.model, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
