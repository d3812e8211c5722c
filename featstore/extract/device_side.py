"""Work done on the device before features reach the host (for when a GPU is present).

- `HostCopy`: a device tensor copied to pinned host memory on a side stream, without blocking: the copy of
  batch i overlaps the forward pass of batch i+1; the writer thread waits for it only when it assembles the
  segment. On a CPU the tensor is already on the host and nothing is copied.
- `encode_torch`: the 8-bit encoding of `featstore.store.encoding.encode`, in torch, so a GPU hands over one
  byte per value (a quarter of float32's traffic) instead of float32 rows. Same operations in the same float
  precision: codes, scales, shifts and gains equal the host encoding bit for bit (tested on CPU tensors); the
  channel statistics are float64 sums rounded to float32 in both.
- `encode_segment_on_device`: a segment's rows, kept on the device batch after batch, encoded there at once
  (the channel standardisation is fitted on the whole segment, as on the host).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..store.encoding import FP8_MAX, INT8_MAX

_STREAMS: dict[Any, Any] = {}


class HostCopy:
    """A tensor on its way to host memory; `numpy()` waits for the copy and returns the host array."""

    def __init__(self, t: Any):
        import torch

        self._done = None
        if t.device.type != "cuda":
            self._host = t.detach()
            return
        stream = _STREAMS.setdefault(t.device, torch.cuda.Stream(device=t.device))
        ready = torch.cuda.Event()
        ready.record()  # on the compute stream: `t` is complete once this fires
        self._host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)  # from torch's caching host allocator
        with torch.cuda.stream(stream):
            stream.wait_event(ready)
            self._host.copy_(t, non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record(stream)
        t.record_stream(stream)  # the allocator keeps `t` until the copy has read it

    def numpy(self) -> np.ndarray:
        import torch

        if self._done is not None:
            self._done.synchronize()
        t = self._host
        return t.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def host_array(a: Any) -> np.ndarray:
    """A batch's feature array as numpy, waiting for its copy if it is one."""
    return a.numpy() if isinstance(a, HostCopy) else a


def encode_torch(x: Any, encoding: str) -> dict[str, Any]:
    """(R, D) float rows (a tensor on any device) -> {"": codes (R, D), "_scale": (R,), "_shift": (D,),
    "_gain": (D,)} as tensors on that device; equal to `store.encoding.encode(x.numpy(), encoding)`."""
    import torch

    x = x.float()  # (R, D)
    R, D = x.shape
    if R:
        x64 = x.double()
        shift = x64.mean(dim=0).float()  # (D,)
        gain = x64.std(dim=0, unbiased=False).float()  # (D,)
        gain = torch.where(gain > 0, gain, torch.ones_like(gain))
    else:
        shift, gain = x.new_zeros(D), x.new_ones(D)
    y = (x - shift) / gain  # (R, D)
    top = INT8_MAX if encoding == "int8" else FP8_MAX
    absmax = y.abs().amax(dim=1) if D and R else x.new_zeros(R)  # (R,)
    scale = torch.where(absmax > 0, absmax / top, torch.ones_like(absmax))  # (R,)
    q = y / scale[:, None]
    if encoding == "int8":
        codes = torch.clamp(torch.round(q), -INT8_MAX, INT8_MAX).to(torch.int8)
    elif encoding == "fp8":
        codes = torch.clamp(q, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
    else:
        raise ValueError(f"{encoding!r} is not an 8-bit encoding")
    return {"": codes, "_scale": scale, "_shift": shift, "_gain": gain}


def encode_segment_on_device(batches: list[dict[str, Any]], layers: list[int], encoding: str) -> dict[str, HostCopy]:
    """Encode a segment's rows where they are (the batches hold device tensors under `L{k}/{kind}`, removed
    here) and start their copies to the host: {store array name: HostCopy}."""
    import torch

    out: dict[str, HostCopy] = {}
    for k in layers:
        for kind in ("tokens", "cls", "mean"):
            name = f"L{k}/{kind}"
            rows = torch.cat([b.pop(name) for b in batches])  # (R, D) on the device
            for suffix, t in encode_torch(rows, encoding).items():
                out[name + suffix] = HostCopy(t)
    return out
