"""Batches from the store: every example once per epoch, exact padding and masks, seeded chunk-aware shuffle,
in-RAM and streamed reads identical, prefetch errors surface."""
from __future__ import annotations

import numpy as np
import pytest

import featstore
from heads.config import parse_bytes, select_stored_layers
from featstore.loading.batches import BatchReader, BatchSpec, chunk_ranges, plan_windows
from heads.data import Features, Loader
from heads.errors import InputError


@pytest.fixture(scope="module")
def split(stores):
    store = featstore.open_store(stores["cls"])
    yield store.split("train")
    store.close()


def test_plan_covers_every_example_once_and_is_seeded():
    lengths = np.random.default_rng(0).integers(1, 30, 103)
    chunks = chunk_ranges(lengths, [40, 63], chunk_tokens=64)

    def plan(seed, epoch, shuffle=True):
        return plan_windows(lengths, chunks, batch_tokens=None, batch_size=8, shuffle=shuffle, seed=seed, epoch=epoch,
                            buffer_chunks=3)

    def flat(p):
        return np.concatenate([b for _, bs in p for b in bs])

    for p in (plan(7, 1), plan(7, 1, shuffle=False)):
        assert sorted(flat(p)) == list(range(103))
        for window, bs in p:  # batches come from their window's chunks: contiguous reads, each inside a segment
            inside = np.concatenate([np.arange(a, b) for a, b in window])
            assert all(np.isin(b, inside).all() and len(b) <= 8 for b in bs)
            assert all(b <= 40 or a >= 40 for a, b in window)
    assert np.array_equal(flat(plan(7, 1)), flat(plan(7, 1))) and not np.array_equal(flat(plan(7, 1)), flat(plan(7, 2)))
    assert not np.array_equal(flat(plan(7, 1)), flat(plan(8, 1)))
    assert np.array_equal(flat(plan(7, 1, shuffle=False)), np.arange(103))  # eval: storage order


@pytest.mark.parametrize("in_ram", [True, False])
def test_padded_batches_match_the_store(split, in_ram):
    src = Features.from_split(split, "tokens", [1, 2], in_ram=in_ram)
    y = split.targets("label")
    seen = []
    for batch in Loader(src, y, 16, shuffle=True, seed=1).epoch(3):
        B, T, L, D = batch.x.shape
        assert batch.x.dtype == np.float32 and (L, D) == (2, 16) and B <= 16
        assert np.array_equal(batch.mask.sum(1), split.lengths[batch.index])
        assert T == split.lengths[batch.index].max()  # padded to the longest in the batch only
        for b, i in enumerate(batch.index[:3]):
            ex = split.example(int(i), [1, 2])  # (T_i, L, D)
            np.testing.assert_array_equal(batch.x[b, :len(ex)], ex.astype(np.float32))
            assert not batch.x[b, len(ex):].any()
        assert np.array_equal(batch.y, y[batch.index])
        seen += list(batch.index)
    assert sorted(seen) == list(range(split.n_examples))


def test_streamed_equals_in_ram(split):
    def feats(in_ram):
        return Features.from_split(split, "tokens", [2], in_ram=in_ram)

    assert feats(True).in_ram and not feats(False).in_ram
    a = [b for b in Loader(feats(True), None, 32, shuffle=True, seed=5).epoch(1)]
    b = [b for b in Loader(feats(False), None, 32, shuffle=True, seed=5).epoch(1)]
    assert len(a) == len(b) == len(Loader(feats(False), None, 32, shuffle=True))
    for x, z in zip(a, b):
        assert np.array_equal(x.index, z.index) and np.array_equal(x.x, z.x)


def test_padding_is_small(split):
    """Length bucketing: padded tokens are a small fraction of real ones."""
    real = padded = 0
    for batch in Loader(Features.from_split(split, "tokens", [2]), None, 32, shuffle=True, seed=0).epoch(1):
        real, padded = real + batch.mask.sum(), padded + batch.mask.size
    assert padded / real < 1.2  # random batches of lengths 8..24 would pad ~40% more


def test_pooled_batches(split):
    src = Features.from_split(split, "pooled", [1, 2], "mean")
    batch = next(iter(Loader(src, None, 10, shuffle=False).epoch()))
    assert batch.x.shape == (10, 2, 16) and batch.mask is None
    np.testing.assert_array_equal(batch.x[:, 1], split.pooled("mean", 2)[:10].astype(np.float32))


def test_pooled_batches_mix_lengths(split):
    """Pooled features carry no padding: their shuffle is not held to length order (batches of alike lengths
    would also be alike in content), while token batches are."""
    def spread(reads):
        loader = Loader(Features.from_split(split, reads, [2], "mean"), None, 8, shuffle=True, seed=0)
        return np.mean([np.ptp(split.lengths[b.index]) for b in loader.epoch(1)])

    assert spread("pooled") > 2 * spread("tokens")


def test_prefetch_errors_surface_and_early_exit_stops_the_thread(split):
    import threading

    broken = Features.from_split(split, "tokens", [2], in_ram=False)

    def gone(window):
        raise OSError("disk gone")

    broken.reader.read = gone
    with pytest.raises(OSError, match="disk gone"):
        list(Loader(broken, None, 8, shuffle=False).epoch())

    def workers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith(("heads-prefetch", "featstore-read"))]

    assert workers() == []  # the failed epoch left none behind
    it = Loader(Features.from_split(split, "tokens", [2], in_ram=False), None, 8, shuffle=False, prefetch=1).epoch()
    next(it)
    assert "heads-prefetch" in workers()  # batches ahead of the consumer
    it.close()  # the worker is told to stop and joined, and with it the reader
    assert workers() == []


def test_layer_specs():
    stored = [0, 3, 6]
    assert select_stored_layers("all", stored) == [0, 3, 6]
    assert select_stored_layers("-1", stored) == [6] and select_stored_layers("-1,-3", stored) == [0, 6]
    assert select_stored_layers("3", stored) == [3]
    with pytest.raises(InputError, match="lacks layers \\[4\\]"):
        select_stored_layers("4", stored)
    with pytest.raises(InputError, match="holds only 3 layers"):
        select_stored_layers("-4", stored)
    with pytest.raises(InputError, match="bad --layers"):
        select_stored_layers("last", stored)
    assert parse_bytes("2GiB") == 2 << 30 and parse_bytes("0") == 0 and parse_bytes("1.5 GB") == 1_500_000_000


def test_batches_change_members_between_epochs_even_when_every_length_differs():
    # Length order alone would give the same batches every epoch when no two examples are equally long (a
    # batch keeping its members cost accuracy): the jitter moves examples, and each is still seen once per epoch.
    lengths = np.arange(1, 65)
    src = Features.from_arrays(np.zeros((int(lengths.sum()), 1, 4), dtype=np.float32), lengths)
    loader = Loader(src, None, 4, shuffle=True, seed=0)
    members = [{frozenset(b.index.tolist()) for b in loader.epoch(e)} for e in (1, 2)]
    assert all(sum(len(m) for m in ms) == 64 for ms in members)
    assert members[0] != members[1]


def test_next_window_is_read_while_this_one_is_batched(split):
    """Streaming overlaps reading with training: the next window's read starts before the consumer has even
    taken the first batch of the current one (without that, this test waits out its timeout and fails)."""
    import threading

    reader = BatchReader(split, BatchSpec((2,), "tokens"), chunk_tokens=8)  # many small chunks: several windows
    src = Features(reader)
    loader = Loader(src, None, 2, shuffle=True, seed=0)
    plan = loader.plan(1)
    assert len(plan) > 1
    first_window, second_read, read = plan[0][0], threading.Event(), reader.read

    def slow_read(window):
        if window != first_window:
            second_read.set()
        return read(window)

    reader.read = slow_read
    it = loader.epoch(1)
    first = next(it)
    assert second_read.wait(timeout=10), "the next window was not read ahead"
    assert len(first.index) + sum(len(b.index) for b in it) == len(split)


def test_windows_of_wide_features_stay_bounded(monkeypatch):
    """Chunks and windows are sized by bytes for heads, so streaming a wide model's features holds a bounded
    amount at once (two windows: one batched, one read ahead), whatever the tokens per chunk."""
    import featstore.loading.batches as fb

    monkeypatch.setattr(fb, "CHUNK_BYTES", 300 * 512)  # 300 tokens of 512 bytes
    monkeypatch.setattr(fb, "WINDOW_BYTES", 3 * 310 * 512)  # 3 chunks (a chunk ends on an example: <= 310 tokens)
    lengths = np.full(300, 10)
    src = Features.from_arrays(np.zeros((3000, 2, 64), dtype=np.float32), lengths)  # 512 bytes a token
    reader = src.reader
    assert reader.token_bytes == 512 and len(reader.chunks) == 10
    plan = Loader(src, None, 4, shuffle=True, seed=0).plan(1)
    assert len(plan) == 4  # 10 chunks, 3 a window
    for window, _ in plan:
        assert sum(int(reader.offsets[b] - reader.offsets[a]) for a, b in window) <= 3 * 310
    assert sorted(np.concatenate([b for _, bs in plan for b in bs])) == list(range(300))
