"""Child process of test_torch_data.py: one rank reading epochs of `split.torch_iterable` through a DataLoader
with 0 workers (epochs 0 and 1) and with 2 spawned workers (epoch 1); the rank and world size come from torch.distributed (gloo) when world > 1.
Writes {workers: {epoch: [storage indices in the order seen]}} as JSON."""
import json
import sys

if __name__ == "__main__":
    store_path, rank, world, port, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    import featstore

    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    split = featstore.open_store(store_path).split("train")
    seen = {}
    for workers in (0, 2):
        ds = split.torch_iterable(batch_tokens=96, seed=7, targets="label", chunk_tokens=48, buffer_chunks=2)
        loader = DataLoader(ds, batch_size=None, num_workers=workers,
                            multiprocessing_context="spawn" if workers else None)
        seen[workers] = {}
        for epoch in ((0, 1) if workers == 0 else (1,)):  # each epoch spawns its workers anew: one epoch here
            ds.set_epoch(epoch)
            seen[workers][epoch] = [int(i) for b in loader for i in b["index"]]
    with open(out, "w") as f:
        json.dump(seen, f)
    if world > 1:
        dist.destroy_process_group()
