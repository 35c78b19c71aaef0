"""Hugging Face Accelerate with a shardkit loader, run by torchrun (CPU, gloo):

    python -m torch.distributed.run --standalone --nproc_per_node=2 accelerate_train.py ROOT OUT
        [--try-prepare-loader] [--stop K] [--resume DIR] [--epochs E]

The documented way: ``accelerator.prepare(model, optimizer)`` without the loader (shardkit
shards across the ranks itself, from the process group Accelerator initialised), and
``accelerator.register_for_checkpointing(loader)`` so that ``save_state`` / ``load_state``
carry the loader's position. ``--try-prepare-loader`` first passes the loader to ``prepare()``
too, as Accelerate's examples do (and to ``prepare_data_loader`` with the settings that change its
sharding), and records what happens when the result is iterated. With
``--stop K`` it saves ``save_state(OUT/state)`` after K steps and stops; with ``--resume`` it
loads that state and trains to the end. Each rank writes ``OUT/rank{r}.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

import torch
from torch import nn

from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader

from shardkit import StreamingDataset, make_loader


def first_batch(loader) -> str:
    """What iterating ``loader`` gives: ``"batch"``, or the error it raises."""
    try:
        next(iter(loader))
    except Exception as err:  # noqa: BLE001 - what the user would see is the point
        return f"{type(err).__name__}: {err}"
    return "batch"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("out", type=Path)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--try-prepare-loader", action="store_true")
    p.add_argument("--stop", type=int)
    p.add_argument("--resume", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(1200, 8), nn.Flatten(0, -1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dataset = StreamingDataset(args.root, seed=3, shuffle_buffer=10)  # the ranks of Accelerator's process group
    loader = make_loader(dataset, 5, num_workers=1)
    doc: dict = {"rank": accelerator.process_index, "world": accelerator.num_processes,
                 "distributed_type": str(accelerator.distributed_type), "dataset_rank": dataset.rank,
                 "dataset_world": dataset.world_size}

    if args.try_prepare_loader:  # the default way: Accelerate rebuilds the DataLoader with its own sharding
        prepared = accelerator.prepare(loader)
        doc["prepared"] = {"type": type(prepared).__name__, "sampler": type(prepared.sampler).__name__,
                           "is_shardkit_loader": prepared is loader, "outcome": first_batch(prepared)}
        # and with the settings of DataLoaderConfiguration that change how it shards (dispatch_batches
        # is left out: its rank 0 fails in the middle of a broadcast the other ranks then wait on)
        doc["variants"] = {}
        for name, setting in {"even_batches=False": {"even_batches": False}, "split_batches=True": {"split_batches": True},
                              "use_stateful_dataloader=True": {"use_stateful_dataloader": True}}.items():
            try:
                variant = prepare_data_loader(loader, accelerator.device, num_processes=accelerator.num_processes,
                                              process_index=accelerator.process_index, **setting)
            except Exception as err:  # noqa: BLE001 - what the user would see is the point
                doc["variants"][name] = f"{type(err).__name__}: {err}"
            else:
                doc["variants"][name] = first_batch(variant)

    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(loader)
    step = 0
    if args.resume:
        accelerator.load_state(args.resume)
        step = int((args.resume / "step.txt").read_text())
    seen = []
    for epoch in range(loader.stream.epoch, args.epochs):  # the epoch the restored loader is in
        for padded, lengths, labels in loader:
            padded = padded.to(accelerator.device)
            loss = model(padded).float().mean()
            optimizer.zero_grad()
            accelerator.backward(loss)  # gradients all-reduced: the ranks step in lockstep
            optimizer.step()
            seen.append({"epoch": epoch, "step": step, "ids": padded[:, 0].tolist()})
            step += 1
            if step == args.stop:
                accelerator.save_state(args.out / "state")  # rank 0 writes; the loader state is the same on all
                if accelerator.is_main_process:
                    (args.out / "state" / "step.txt").write_text(str(step))
                break
        if step == args.stop:
            break
    doc["seen"] = seen
    (args.out / f"rank{accelerator.process_index}.json").write_text(json.dumps(doc))
    # free DDP and its gloo work before the interpreter exits (see torchrun_train.py)
    accelerator.free_memory()
    del model, optimizer
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
