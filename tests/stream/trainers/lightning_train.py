"""A LightningModule trained with Trainer(strategy="ddp", accelerator="cpu", devices=2) on a
shardkit loader; run as a script (Lightning's ddp re-runs it for rank 1).

    python lightning_train.py ROOT OUT [--epochs 2] [--save-steps 3 11] [--save-epoch-end]
        [--resume CKPT] [--workers N]

Each rank writes OUT/rank{r}.json: the sample ids of every training batch with its epoch and
global step, what Lightning made of the loader (same object? its sampler's class), and the
epochs Lightning passed to the sampler's set_epoch. With --save-steps, ModelCheckpoint saves at
those global steps (OUT/step={n}.ckpt), with --save-epoch-end at each epoch's end
(OUT/epoch={e}.ckpt); with --resume, fit continues from that checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

import lightning as L
from lightning.pytorch.callbacks import Callback

from shardkit import StreamingDataset, make_loader


class TinyModel(L.LightningModule):
    def __init__(self, root: str, batch_size: int, workers: int) -> None:
        super().__init__()
        self.root, self.batch_size, self.workers = root, batch_size, workers
        self.embed = nn.Embedding(1200, 8)
        self.head = nn.Linear(8, 5)
        self.seen: list[dict] = []
        self.loader = None

    def train_dataloader(self):
        # rank and world size come from the process group Lightning initialised
        dataset = StreamingDataset(self.root, seed=5, shuffle_buffer=10)
        self.loader = make_loader(dataset, self.batch_size, num_workers=self.workers)
        return self.loader

    def training_step(self, batch, batch_idx):
        padded, lengths, labels = batch
        self.seen.append({"epoch": self.current_epoch, "step": self.global_step, "ids": padded[:, 0].tolist()})
        mask = (torch.arange(padded.shape[1])[None, :] < lengths[:, None]).float()
        pooled = (self.embed(padded) * mask[..., None]).sum(1) / lengths[:, None]
        return nn.functional.cross_entropy(self.head(pooled), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Record(Callback):
    """Writes what each rank saw, and what Lightning did to the loader, when fit ends."""

    def __init__(self, out: Path) -> None:
        self.out, self.epochs_set = out, []

    def on_train_start(self, trainer, module):
        sampler = trainer.train_dataloader.sampler
        original = sampler.set_epoch

        def spy(epoch):  # record the epochs Lightning passes, then do what it asked
            self.epochs_set.append(epoch)
            original(epoch)
        sampler.set_epoch = spy
        self.loader_info = {"same_loader": trainer.train_dataloader is module.loader,
                            "sampler": f"{type(sampler).__module__}.{type(sampler).__qualname__}",
                            "len": len(trainer.train_dataloader), "num_training_batches": trainer.num_training_batches}

    def on_fit_end(self, trainer, module):
        doc = {"rank": trainer.global_rank, "world": trainer.world_size, "seen": module.seen,
               "epochs_set": self.epochs_set, **self.loader_info}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(doc))


class SaveAt(Callback):
    """Saves a checkpoint after the given global steps (on_train_batch_end, where ModelCheckpoint's
    every_n_train_steps saves) and, with ``epoch_end``, at each epoch's end (its default)."""

    def __init__(self, out: Path, steps: list[int], epoch_end: bool) -> None:
        self.out, self.steps, self.epoch_end = out, set(steps), epoch_end

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step in self.steps:
            trainer.save_checkpoint(self.out / f"step={trainer.global_step}.ckpt")  # rank 0 writes

    def on_train_epoch_end(self, trainer, module):
        if self.epoch_end:
            trainer.save_checkpoint(self.out / f"epoch={trainer.current_epoch}.ckpt")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("out", type=Path)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--save-steps", type=int, nargs="*", default=[])
    p.add_argument("--save-epoch-end", action="store_true")
    p.add_argument("--resume")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=args.epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Record(args.out), SaveAt(args.out, args.save_steps, args.save_epoch_end)])
    trainer.fit(TinyModel(args.root, args.batch_size, args.workers), ckpt_path=args.resume)


if __name__ == "__main__":
    main()
