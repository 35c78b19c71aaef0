"""A DDP training script as users write one, run by torchrun with gloo on CPU:

    python -m torch.distributed.run --standalone --nproc_per_node=N torchrun_train.py ROOT OUT
        [--stop K] [--resume CKPT] [--batch-size B] [--workers W] [--epochs E]

It trains a tiny model on ``make_loader(StreamingDataset(ROOT))`` (sequence shards whose
sequence i starts with token i), calling ``loader.sampler.set_epoch(epoch)`` at each epoch as
scripts written for DistributedSampler do. With ``--stop K`` it stops after K steps: every rank
gathers the others' ``loader.state_dict()`` (they must all be equal), and rank 0 alone saves
``OUT/ckpt.pt``. With ``--resume`` it restores model, optimizer and loader from that file and
trains to the end, the epoch loop starting at the loader state's epoch. Each rank writes
``OUT/rank{r}.json``: the sample ids of each batch, with epoch and step.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from shardkit import StreamingDataset, make_loader


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1200, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, padded, lengths):
        mask = (torch.arange(padded.shape[1])[None, :] < lengths[:, None]).float()
        pooled = (self.embed(padded) * mask[..., None]).sum(1) / lengths[:, None]
        return self.head(pooled)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("out", type=Path)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--stop", type=int)
    p.add_argument("--resume", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)

    dataset = StreamingDataset(args.root, seed=3, shuffle_buffer=10)  # rank, world size: the process group's
    # shuffle= and sampler=None as a script written for DataLoader passes them
    loader = make_loader(dataset, args.batch_size, num_workers=args.workers, shuffle=True, sampler=None)
    model = DistributedDataParallel(Tiny())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    start_epoch, step = 0, 0
    if args.resume:
        checkpoint = torch.load(args.resume, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        loader.load_state_dict(checkpoint["loader"])
        start_epoch, step = checkpoint["loader"]["epoch"], checkpoint["step"]

    seen, states_equal = [], None
    for epoch in range(start_epoch, args.epochs):
        loader.sampler.set_epoch(epoch)
        for padded, lengths, labels in loader:
            loss = nn.functional.cross_entropy(model(padded, lengths), labels)
            optimizer.zero_grad()
            loss.backward()  # DDP all-reduces: a rank that ran out of batches would hang here
            optimizer.step()
            seen.append({"epoch": epoch, "step": step, "ids": padded[:, 0].tolist()})
            step += 1
            if step == args.stop:
                state = loader.state_dict()
                states = [None] * world
                dist.all_gather_object(states, state)
                states_equal = all(s == state for s in states)
                if rank == 0:
                    torch.save({"loader": state, "model": model.state_dict(),
                                "optimizer": optimizer.state_dict(), "step": step}, args.out / "ckpt.pt")
                break
        if step == args.stop:
            break
    doc = {"rank": rank, "world": world, "len": len(loader), "samples": len(dataset), "seen": seen,
           "states_equal": states_equal}
    (args.out / f"rank{rank}.json").write_text(json.dumps(doc))
    # Free DDP (and the gloo work it holds) while the interpreter is whole: left to its exit, it
    # aborts about one run in ten here ("terminate called without an active exception";
    # pytorch/pytorch#179291)
    del model, optimizer
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
