"""Batches from the store: every example once per epoch, exact padding and masks, seeded chunk-aware shuffle,
in-RAM and streamed reads identical, prefetch errors surface."""
from __future__ import annotations

import numpy as np
import pytest

import featstore
from heads.config import parse_bytes, select_stored_layers
from heads.data import Loader, PooledSource, StoreTokens, plan_epoch
from heads.errors import InputError


@pytest.fixture(scope="module")
def split(stores):
    store = featstore.open_store(stores["cls"])
    yield store.split("train")
    store.close()


def test_plan_covers_every_example_once_and_is_seeded():
    rng = lambda e: np.random.default_rng([7, e])  # noqa: E731
    for r in (None, rng(1)):
        plan = plan_epoch(103, 8, 32, r)
        idx = np.concatenate([b for _, _, bs in plan for b in bs])
        assert sorted(idx) == list(range(103))
        for s, e, bs in plan:  # batches stay inside their block: one contiguous read per block
            assert all(((b >= s) & (b < e)).all() and len(b) <= 8 for b in bs)
    a, b, c = plan_epoch(103, 8, 32, rng(1)), plan_epoch(103, 8, 32, rng(1)), plan_epoch(103, 8, 32, rng(2))
    flat = lambda p: np.concatenate([x for _, _, bs in p for x in bs])  # noqa: E731
    assert np.array_equal(flat(a), flat(b)) and not np.array_equal(flat(a), flat(c))
    assert np.array_equal(flat(plan_epoch(103, 8, 32, None)), np.arange(103))  # eval: storage order


@pytest.mark.parametrize("in_ram", [True, False])
def test_padded_batches_match_the_store(split, in_ram):
    src = StoreTokens(split, [1, 2], in_ram=in_ram)
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
    a = [b for b in Loader(StoreTokens(split, [2], True), None, 32, shuffle=True, seed=5).epoch(1)]
    b = [b for b in Loader(StoreTokens(split, [2], False), None, 32, shuffle=True, seed=5).epoch(1)]
    assert len(a) == len(b) == len(Loader(StoreTokens(split, [2], False), None, 32, shuffle=True))
    for x, z in zip(a, b):
        assert np.array_equal(x.index, z.index) and np.array_equal(x.x, z.x)


def test_padding_is_small(split):
    """Length bucketing: padded tokens are a small fraction of real ones."""
    real = padded = 0
    for batch in Loader(StoreTokens(split, [2], True), None, 32, shuffle=True, seed=0).epoch(1):
        real, padded = real + batch.mask.sum(), padded + batch.mask.size
    assert padded / real < 1.2  # random batches of lengths 8..24 would pad ~40% more


def test_pooled_batches(split):
    src = PooledSource.from_split(split, [1, 2], "mean")
    batch = next(iter(Loader(src, None, 10, shuffle=False).epoch()))
    assert batch.x.shape == (10, 2, 16) and batch.mask is None
    np.testing.assert_array_equal(batch.x[:, 1], split.pooled("mean", 2)[:10].astype(np.float32))


def test_prefetch_errors_surface_and_early_exit_stops_the_thread(split):
    class Broken(StoreTokens):
        def read(self, start, stop):
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(Loader(Broken(split, [2], False), None, 8, shuffle=False).epoch())
    import threading

    def workers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith(("heads-prefetch", "heads-read"))]

    assert workers() == []  # the failed epoch left none behind
    it = Loader(StoreTokens(split, [2], False), None, 8, shuffle=False, prefetch=1).epoch()
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


def test_batches_change_members_between_epochs_even_for_huge_examples(monkeypatch):
    # Examples so large that a block of BLOCK_BYTES would hold one batch: a batch must still not keep the
    # same members every epoch (that cost accuracy), and every example is still seen once per epoch.
    import heads.data as hd
    from heads.data import ArrayTokens

    monkeypatch.setattr(hd, "BLOCK_BYTES", 1)
    src = ArrayTokens(np.zeros((64, 1, 4), dtype=np.float32), np.ones(64, dtype=np.int64))
    loader = Loader(src, None, 4, shuffle=True, seed=0)
    assert loader.block >= hd.MIN_BLOCK_BATCHES * 4
    members = [{frozenset(b.index.tolist()) for b in loader.epoch(e)} for e in (1, 2)]
    assert all(sum(len(m) for m in ms) == 64 for ms in members)
    assert members[0] != members[1]


def test_next_window_is_read_while_this_one_is_batched():
    """Streaming overlaps reading with training: the next window's read starts before the consumer has even
    taken the first batch of the current one (without that, this test waits out its timeout and fails)."""
    import threading

    from heads.data import ArrayTokens

    class SlowSource(ArrayTokens):
        def __init__(self, *a):
            super().__init__(*a)
            self.reads, self.second_read = [], threading.Event()

        def read(self, start, stop):
            self.reads.append(start)
            if len(self.reads) > 1 and start not in first_window:
                self.second_read.set()
            return super().read(start, stop)

    src = SlowSource(np.zeros((300, 1, 4), dtype=np.float32), np.ones(300, dtype=np.int64))
    loader = Loader(src, None, 2, shuffle=True, seed=0)
    first_window = {s for s, _, _ in loader.plan(1)[:loader.window]}
    assert len(loader.plan(1)) > loader.window  # at least two windows
    it = loader.epoch(1)
    first = next(it)
    assert src.second_read.wait(timeout=10), "the next window was not read ahead"
    assert len(first.index) + sum(len(b.index) for b in it) == 300
