"""torch.distributed for extraction under torchrun: rank and world, barriers, totals. A rank that dies makes
the others fail at the next meeting point with PeerFailed, so the failed rank's own error is the one error line."""
from __future__ import annotations

import os
from datetime import timedelta

from ..errors import PeerFailed


def distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun; (0, 1) otherwise. No home-made launcher: torch.distributed only."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        # A bounded wait: a rank that dies without torchrun noticing (e.g. launched by srun) cannot leave the
        # others in a barrier forever. Under torchrun a failed rank ends the group within seconds anyway.
        timeout = timedelta(seconds=float(os.environ.get("FEATSTORE_DIST_TIMEOUT", "1800")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)
    return dist.get_rank(), world


def sum_over_ranks(world: int, *values: int) -> tuple[int, ...]:
    """Totals over every rank (one all-reduce of a small tensor at the end: no objects, no pickle)."""
    if world <= 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    try:
        dist.all_reduce(t)
    except Exception as e:  # noqa: BLE001
        raise PeerFailed(f"rank {dist.get_rank()} of {world}: stopped, another rank failed ({type(e).__name__})") from e
    return tuple(int(v) for v in t.tolist())


def barrier(world: int) -> None:
    """Wait for every rank. A rank that died makes the others fail here (connection closed, or the timeout):
    that is reported as PeerFailed, so the failed rank's own error stays the one error line."""
    if world > 1:
        import torch.distributed as dist

        try:
            dist.barrier()
        except Exception as e:  # noqa: BLE001 - gloo/nccl raise RuntimeError subclasses
            raise PeerFailed(f"rank {dist.get_rank()} of {world}: stopped, another rank failed "
                             f"({type(e).__name__}); committed segments are kept") from e
