"""Every kind of store loads with unpickling disabled: zarr, HDF5, a published copy read in place, a pulled copy."""
from __future__ import annotations

import numpy as np

import featstore
from featstore.share import pull, push
from featstore.verify import info, verify


def read_everything(path: str, **kw) -> int:
    n = 0
    with featstore.open_store(path, **kw) as s:
        for name in s.splits:
            sp = s.split(name)
            parts = [sp.rows, sp.offsets, np.array(sp.example_ids), sp.targets("label")]
            parts += [sp.input_ids(i) for i in range(len(sp))]
            for k in s.layers:
                parts += [sp.tokens(k, 0, sp.n_tokens), sp.pooled("cls", k), sp.pooled("mean", k)]
            n += sum(int(np.asarray(p).size) for p in parts)
        n += sum(s.label_features("label", k).size for k in s.layers)
    return n


def test_stores_load_with_unpickling_disabled(shared_store, shared_h5, tmp_path, no_unpickling):
    for path in (shared_store, shared_h5):
        assert read_everything(path) > 0 and verify(path) == [] and info(path)["complete"]
    url = "file://" + str(tmp_path / "published" / "sst2")
    push(shared_store, url, progress=False)
    assert read_everything(url, cache_dir=str(tmp_path / "c")) == read_everything(shared_store)
    pull(url, str(tmp_path / "copy"), progress=False)
    assert read_everything(str(tmp_path / "copy")) == read_everything(shared_store)
