"""Token context encoder (heads.context): shapes, padding, identity at K=0, and a task only context can solve."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from heads.context import ContextEncoder, sinusoidal

KINDS = ["lstm", "transformer"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("segments", [False, True])
def test_shapes(kind, segments):
    enc = ContextEncoder(16, kind, layers=2, heads=4, segments=segments)
    x, mask = torch.randn(3, 7, 16), torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    seg = torch.zeros(3, 7, dtype=torch.long) if segments else None
    out = enc(x, mask, seg)
    assert out.shape == (3, 7, 16) and torch.isfinite(out).all()
    assert torch.equal(out[1, 4:], x[1, 4:])  # padding keeps its input
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("segments", [False, True])
def test_padding_never_changes_a_real_token(kind, segments):
    torch.manual_seed(0)
    enc = ContextEncoder(16, kind, layers=2, heads=2, segments=segments).eval()
    if segments:  # not the zero initialisation: the segments must matter here
        nn.init.normal_(enc.segment.weight)
    short, long = torch.randn(1, 5, 16), torch.randn(1, 9, 16)
    seg_short = torch.tensor([[0, 0, 1, 1, 1]])
    seg_long = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    alone = enc(short, torch.ones(1, 5, dtype=torch.bool), seg_short if segments else None)
    batch = torch.cat([torch.cat([short, 100 * torch.randn(1, 4, 16)], 1), long])  # padding: large junk
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 5:] = False
    seg = torch.cat([torch.cat([seg_short, torch.ones(1, 4, dtype=torch.long)], 1), seg_long])
    both = enc(batch, mask, seg if segments else None)
    assert torch.allclose(both[0, :5], alone[0], atol=1e-5)
    long_alone = enc(long, torch.ones(1, 9, dtype=torch.bool), seg_long if segments else None)
    assert torch.allclose(both[1], long_alone[0], atol=1e-5)
    if segments:  # and the segment ids do change the output
        flipped = enc(short, torch.ones(1, 5, dtype=torch.bool), 1 - seg_short)
        assert not torch.allclose(flipped, alone, atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_layers_is_identity(kind):
    enc = ContextEncoder(15, kind, layers=0, segments=True)  # any width: nothing is built
    x, mask = torch.randn(2, 4, 15), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert enc(x, mask) is x
    assert sum(p.numel() for p in enc.parameters()) == 0


def test_bad_settings():
    with pytest.raises(ValueError, match="even width"):
        ContextEncoder(15, "lstm", layers=1)
    with pytest.raises(ValueError, match="not divisible by 4 heads"):
        ContextEncoder(18, "transformer", layers=1, heads=4)
    with pytest.raises(ValueError, match="use one of lstm, transformer"):
        ContextEncoder(16, "gru", layers=1)
    with pytest.raises(ValueError, match="pass segment_ids"):
        ContextEncoder(16, "lstm", layers=1, segments=True)(torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.bool))


def test_sinusoidal_positions():
    pe = sinusoidal(50, 8)
    assert pe.shape == (50, 8) and torch.allclose(pe[0], torch.tensor([0.0, 1.0] * 4))
    assert torch.equal(sinusoidal(10, 8), pe[:10])  # a position's code does not depend on the length


def neighbour_task(n: int, T: int, d_in: int, seed: int):
    """Features (n, T, d_in) of random tokens; a token's tag is whether its LEFT neighbour's first feature is
    positive (token 0: tag 0). A token's own features say nothing about its tag: only context can."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, T, d_in, generator=g)
    lengths = torch.randint(T // 2, T + 1, (n,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (n, T) right padding
    y = torch.zeros(n, T, dtype=torch.long)
    y[:, 1:] = (x[:, :-1, 0] > 0).long()
    y[~mask] = -100
    return x, mask, y


class Tagger(nn.Module):
    """Per-token linear in, the context encoder, per-token linear out: a token head in miniature."""

    def __init__(self, d_in: int, d: int, kind: str, layers: int):
        super().__init__()
        self.inp, self.ctx, self.out = nn.Linear(d_in, d), ContextEncoder(d, kind, layers, heads=2, dropout=0.0), \
            nn.Linear(d, 2)

    def forward(self, x, mask):
        return self.out(self.ctx(self.inp(x), mask))


def train_tagger(kind: str, layers: int, steps: int = 100) -> float:
    torch.manual_seed(0)
    x, mask, y = neighbour_task(256, 12, 8, seed=1)
    xt, mt, yt = neighbour_task(256, 12, 8, seed=2)
    model = Tagger(8, 32, kind, layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(model(x[idx], mask[idx]).reshape(-1, 2), y[idx].reshape(-1),
                                           ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(xt, mt).argmax(-1)
    scored = yt != -100
    scored[:, 0] = False  # token 0's tag is constant; score the tokens that have a left neighbour
    return float((pred[scored] == yt[scored]).float().mean())


@pytest.mark.parametrize("kind", KINDS)
def test_context_task_learned_only_with_context(kind):
    without = train_tagger(kind, 0)
    with_ctx = train_tagger(kind, 1)
    assert without < 0.65  # chance: a token's own features carry no information about its tag
    assert with_ctx > 0.9
