"""Head modules: shapes, padding is masked, label-prior initialisation, parameter counts."""
from __future__ import annotations

import numpy as np
import torch

from heads.nets import build_head, count_trainable
from heads.nets.ytuning import YTuningHead
from heads.spec import HeadSpec
from heads.tasks.regression import Regression


def spec(**kw):
    base = dict(kind="ytuning", task="classification", n_outputs=3, hidden_size=12, n_layers_in=2, d_head=16,
                n_layers=2, n_heads=2, dropout=0.0)
    return HeadSpec(**{**base, **kw})


def test_shapes():
    torch.manual_seed(0)
    x, mask = torch.randn(4, 9, 2, 12), torch.ones(4, 9, dtype=torch.bool)  # (B, T, L, D), (B, T)
    assert build_head(spec())(x, mask).shape == (4, 3)
    out = build_head(spec(task="regression", n_outputs=1))(x, mask)
    assert out.shape == (4, 1)  # heads score; the task reads the one score as the value
    assert Regression("score").outputs(out, spec(task="regression", n_outputs=1)).shape == (4,)
    pooled = torch.randn(4, 2, 12)  # (B, L, D)
    assert build_head(spec(kind="linear", pooling="mean"))(pooled).shape == (4, 3)
    assert build_head(spec(kind="mlp", pooling="cls"))(pooled).shape == (4, 3)
    assert count_trainable(build_head(spec(kind="linear", pooling="mean"))) == 2 * 12 * 3 + 3


def test_padding_is_masked():
    """An example's logits do not depend on how much padding (of any value) follows it."""
    torch.manual_seed(0)
    head = build_head(spec()).eval()
    x = torch.randn(1, 5, 2, 12)
    short = head(x, torch.ones(1, 5, dtype=torch.bool))
    padded_x = torch.cat([x, 100 * torch.randn(1, 7, 2, 12)], dim=1)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, :5] = True
    torch.testing.assert_close(head(padded_x, mask), short, rtol=1e-5, atol=1e-5)


def test_label_prior_init_and_layer_mix():
    torch.manual_seed(0)
    head = YTuningHead(spec())
    feats = np.random.default_rng(0).standard_normal((3, 2, 12)).astype(np.float32)  # (Y, L, D)
    common = 50 * np.random.default_rng(1).standard_normal((1, 2, 12)).astype(np.float32)  # shared by all names
    head.init_queries_from(feats + common)
    expected = head.memory(torch.as_tensor(feats + common))
    expected = expected - expected.mean(0)  # what tells the labels apart
    cos = torch.nn.functional.cosine_similarity(head.queries, expected, dim=-1)
    assert torch.allclose(cos, torch.ones(3), atol=1e-5)
    q = torch.nn.functional.normalize(head.queries, dim=-1)
    assert (q @ q.T - torch.eye(3)).abs().max() < 0.9  # distinct queries despite the common component
    assert torch.allclose(head.queries.std(-1), torch.ones(3), atol=1e-5)
    w = head.mix.logits.softmax(0)
    assert torch.allclose(w, torch.full((2,), 0.5))  # uniform mix at init
