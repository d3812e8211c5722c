"""Reading a store split in batches, from your own training code and from `heads`' alike: a seeded, chunk-aware
batch plan shared out over DataLoader workers and ranks (`batches.py`, numpy only) and the PyTorch datasets built
on it (`torch_data.py`, imported only when asked for, so the CLI never pays for torch)."""
from .batches import BatchReader, BatchSpec

__all__ = ["BatchReader", "BatchSpec"]
