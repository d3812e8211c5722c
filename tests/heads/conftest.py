"""Synthetic stores (no model) and one trained head, shared by the heads tests. Everything under tmp dirs."""
from __future__ import annotations

import pytest
import torch

from heads import TrainConfig, train

from .synthetic import classification_store, regression_store

# A small Y-Tuning head: enough to learn the planted signals in a few seconds on two CPU cores.
SMALL = dict(d_head=32, n_layers=1, n_heads=2, lr=3e-3, epochs=20, patience=5, progress=False)
REGRESSION_STORE = dict(n_train=800, signal=12.0, min_len=4, max_len=12)


@pytest.fixture(scope="session")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    return {
        # three layers, the signal in the middle one: a layer mix that reads the wrong layer cannot learn it
        "cls": classification_store(str(d / "cls"), signal=6.0, layers=(0, 1, 2), signal_layer=1),
        # the control: the class shows in mean pooling, which the pooled probes must learn
        "pooled": classification_store(str(d / "pooled"), n_train=300, n_dev=100, n_test=100, signal=4.0,
                                       pooled=True, min_len=4, max_len=12),
        "reg": regression_store(str(d / "reg"), **REGRESSION_STORE),
        "nodev": classification_store(str(d / "nodev"), n_train=120, n_test=40, splits=("train", "test"), signal=5.0),
        "h5": classification_store(str(d / "cls.h5"), n_train=120, n_dev=40, n_test=40, fmt="hdf5", signal=5.0),
    }


@pytest.fixture(scope="session")
def ytuning_run(stores, tmp_path_factory):
    """Y-Tuning on the planted classification store, two seeds."""
    out = str(tmp_path_factory.mktemp("runs") / "ytuning")
    result = train(TrainConfig("ytuning", store=stores["cls"], label_column="label", out=out, seeds=[0, 1], **SMALL))
    return out, result


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny heads gain nothing from intra-op threads, and on a shared 2-core machine OpenMP threads waiting
    for each other make them ten times slower; one thread keeps the suite fast and timings stable."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
