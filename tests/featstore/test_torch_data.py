"""PyTorch datasets over a store split: exactly once per epoch over workers x ranks (real spawned processes),
seeded shuffles, items and batches equal to the reader's, 8-bit / projected / remote stores."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import featstore  # noqa: E402
from featstore.convert import convert  # noqa: E402
from featstore.errors import InputError  # noqa: E402
from featstore.loading.torch_data import decode_codes, pad_collate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _indices(ds, epoch: int = 0) -> list[int]:
    ds.set_epoch(epoch)
    return [int(i) for b in ds for i in b["index"]]


def test_every_example_once_per_epoch_over_workers_and_ranks(shared_store, tmp_path):
    n = len(featstore.open_store(shared_store).split("train"))
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for world in (1, 2):
        port = str(_port())
        outs = [str(tmp_path / f"w{world}-r{r}.json") for r in range(world)]
        procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "featstore", "_torch_epoch.py"),
                                   shared_store, str(r), str(world), port, outs[r]], env=env, cwd=ROOT,
                                  stderr=subprocess.PIPE) for r in range(world)]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err.decode()[-3000:]
        seen = [json.load(open(o)) for o in outs]
        for workers, epochs in (("0", ("0", "1")), ("2", ("1",))):
            for epoch in epochs:
                got = [i for s in seen for i in s[workers][epoch]]
                assert sorted(got) == list(range(n)), (world, workers, epoch)  # each example exactly once
                if world == 2:
                    assert all(s[workers][epoch] for s in seen)  # both ranks had work
        assert seen[0]["0"]["0"] != seen[0]["0"]["1"]  # a new shuffle each epoch


def test_shuffles_differ_by_seed_and_repeat_with_the_same_seed(shared_store):
    sp = featstore.open_store(shared_store).split("train")
    make = lambda seed: sp.torch_iterable(batch_tokens=96, seed=seed, chunk_tokens=48, buffer_chunks=2)  # noqa: E731
    a, b, c = _indices(make(0)), _indices(make(0)), _indices(make(1))
    assert a == b and a != c and sorted(a) == sorted(c) == list(range(len(sp)))
    ordered = _indices(sp.torch_iterable(batch_tokens=96, shuffle=False, chunk_tokens=48))
    assert ordered == list(range(len(sp)))  # no shuffle: storage order


def test_batches_equal_the_reader_and_respect_the_budget(shared_store):
    store = featstore.open_store(shared_store)
    sp = store.split("train")
    y = sp.targets("label")
    for batch in sp.torch_iterable(layers=[2, 1], batch_tokens=100, targets="label", chunk_tokens=48):
        x, mask, lens = batch["features"], batch["mask"], batch["lengths"]
        assert x.dtype == torch.float32 and x.shape[2:] == (2, store.width)
        assert x.shape[0] * x.shape[1] <= 100 or x.shape[0] == 1
        for b, i in enumerate(batch["index"].tolist()):
            n = int(lens[b])
            np.testing.assert_array_equal(x[b, :n].numpy(), sp.example(i, [2, 1]).astype(np.float32))
            assert mask[b, :n].all() and not mask[b, n:].any() and not x[b, n:].any()
            assert batch["ids"][b] == sp.example_ids[i] and int(batch["targets"][b]) == y[i]
    pooled = list(sp.torch_iterable(features="pooled", pooling="cls", layers=[1], batch_size=7, shuffle=False))
    assert max(len(b["index"]) for b in pooled) == 7
    np.testing.assert_array_equal(torch.cat([b["features"][:, 0] for b in pooled]).numpy(),
                                  sp.pooled("cls", 1).astype(np.float32))


def test_map_style_items_equal_the_reader(shared_store):
    store = featstore.open_store(shared_store)
    sp = store.split("validation")
    ds = sp.torch_dataset(layers=[1, 2], targets=["label"])
    assert len(ds) == len(sp)
    for i in range(len(sp)):
        item = ds[i]
        np.testing.assert_array_equal(item["features"].numpy(), sp.example(i, [1, 2]).astype(np.float32))
        assert item["id"] == sp.example_ids[i] and int(item["targets"]["label"]) == sp.targets("label")[i]
    pooled = sp.torch_dataset(features="pooled", layers=[2], targets="label")
    np.testing.assert_array_equal(pooled[3]["features"][0].numpy(), sp.pooled("mean", 2)[3].astype(np.float32))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=pad_collate)
    first = next(iter(loader))
    assert first["features"].shape[:2] == first["mask"].shape and first["mask"].sum() == first["lengths"].sum()
    with pytest.raises(IndexError):
        ds[len(sp)]


def test_8bit_and_projected_stores(shared_store, tmp_path):
    src = featstore.open_store(shared_store).split("train")
    q = str(tmp_path / "int8")
    convert(shared_store, q, "int8")
    sp = featstore.open_store(q).split("train")
    decoded = {int(i): (b["features"], b["lengths"], k) for b in sp.torch_iterable(chunk_tokens=48)
               for k, i in enumerate(b["index"])}
    for i, (x, lens, k) in decoded.items():
        np.testing.assert_array_equal(x[k, :int(lens[k])].numpy(), sp.example(i).astype(np.float32))
        np.testing.assert_allclose(x[k, :int(lens[k])].numpy(), src.example(i), atol=0.05)
    ds = sp.torch_iterable(codes=True, chunk_tokens=48)
    shift, gain = ds.channel_tables()
    for b in ds:
        assert b["features"].dtype == torch.int8
        x = decode_codes(b, shift, gain)
        for k, i in enumerate(b["index"].tolist()):
            np.testing.assert_allclose(x[k, :int(b["lengths"][k])].numpy(), sp.example(i), rtol=1e-5, atol=1e-5)

    p = str(tmp_path / "pca")
    convert(shared_store, p, "float32", project=8)
    store = featstore.open_store(p)
    sp = store.split("train")
    b = next(iter(sp.torch_iterable(layers=[2], shuffle=False)))
    assert b["features"].shape[-1] == 8
    back = next(iter(sp.torch_iterable(layers=[2], shuffle=False, unproject=True)))
    mean, basis = store.projection(2)
    i = int(back["index"][0])
    np.testing.assert_allclose(back["features"][0, :int(back["lengths"][0]), 0].numpy(),
                               sp.example(i, [2])[:, 0] @ basis.T + mean, rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_one_clear_error(shared_store):
    sp = featstore.open_store(shared_store).split("train")
    with pytest.raises(InputError) as e:
        sp.torch_iterable(layers=[9], features="words", targets="nope", batch_tokens=0, codes=True)
    msg = str(e.value)
    for part in ("layers [9]", "features='words'", "targets ['nope']", "batch_tokens=0", "codes=True"):
        assert part in msg
    with pytest.raises(InputError, match="rank 2 of world_size 2"):
        sp.torch_iterable(rank=2, world_size=2)


def test_remote_store_reads_through_the_cache(shared_store, s3_env, tmp_path):
    from featstore.share import push

    url = f"s3://featstore-test/torch-{os.getpid()}/store"
    push(shared_store, url, progress=False)
    local = featstore.open_store(shared_store).split("train")
    remote = featstore.open_store(url, cache_dir=str(tmp_path / "cache")).split("train")
    assert remote.store.is_remote
    ds = remote.torch_iterable(seed=3, targets="label", chunk_tokens=48)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="spawn")
    got = list(loader)
    want = list(local.torch_iterable(seed=3, targets="label", chunk_tokens=48))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for k in ("features", "mask", "index", "targets"):
            assert torch.equal(g[k], w[k])
    assert any(os.scandir(tmp_path / "cache"))
