"""A DDP script shaped like PyTorch's imagenet/main.py where its data path is (dataset, samplers,
loaders, epoch loop, checkpoint), small enough for CPU. The README's diff is applied to this file
by the test, which then runs it with torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node=2 imagenet_shaped.py DATA OUT
        [--epochs E] [--resume CKPT] [--snippet FILE]

As written here (before the diff) it reads DATA/train and DATA/val as ImageFolder trees. Each rank
writes OUT/rank{r}.json: per epoch, the number of samples, the batches' dtype and shape and their
mean; with --snippet, it then runs that file (the README's validation example) with ``model`` and
``device`` defined, and records the ``totals`` and ``top1`` it computes.
"""

import argparse
import json
import os
import shutil

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.utils.data
import torch.utils.data.distributed
import torchvision.datasets as datasets
import torchvision.transforms as transforms

seen = {}


def main_worker(args):
    dist.init_process_group("gloo")
    args.distributed = True
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(
        nn.Conv2d(3, 4, 7, stride=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)))
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(model.parameters(), 0.01)

    if args.resume:
        if os.path.isfile(args.resume):
            checkpoint = torch.load(args.resume)
            args.start_epoch = checkpoint['epoch']
            model.load_state_dict(checkpoint['state_dict'])
            optimizer.load_state_dict(checkpoint['optimizer'])

    traindir = os.path.join(args.data, 'train')
    valdir = os.path.join(args.data, 'val')
    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406],
                                     std=[0.229, 0.224, 0.225])
    if not args.dummy:
        train_dataset = datasets.ImageFolder(
            traindir,
            transforms.Compose([
                transforms.RandomResizedCrop(224),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]))
        val_dataset = datasets.ImageFolder(valdir, transforms.Compose([
            transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize]))

    if args.distributed:
        train_sampler = torch.utils.data.distributed.DistributedSampler(train_dataset)
        val_sampler = torch.utils.data.distributed.DistributedSampler(val_dataset, shuffle=False, drop_last=True)
    else:
        train_sampler = None
        val_sampler = None

    train_loader = torch.utils.data.DataLoader(
        train_dataset, batch_size=args.batch_size, shuffle=(train_sampler is None),
        num_workers=args.workers, pin_memory=True, sampler=train_sampler)

    val_loader = torch.utils.data.DataLoader(
        val_dataset, batch_size=args.batch_size, shuffle=False,
        num_workers=args.workers, pin_memory=True, sampler=val_sampler)

    for epoch in range(args.start_epoch, args.epochs):
        if args.distributed:
            train_sampler.set_epoch(epoch)

        # train for one epoch
        train(train_loader, model, criterion, optimizer, epoch, device, args)

        val_count = validate(val_loader, model, device)
        seen[epoch]["val"] = val_count

        if dist.get_rank() == 0:
            save_checkpoint({
                'epoch': epoch + 1,
                'state_dict': model.state_dict(),
                'optimizer' : optimizer.state_dict(),
            }, args.checkpoint)

    doc = {"epochs": seen}
    if args.snippet:
        names = {"model": model, "device": device}
        exec(open(args.snippet).read(), names)
        doc["totals"], doc["top1"] = names["totals"].tolist(), names["top1"]
    with open(os.path.join(args.out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(doc, f)
    del model, optimizer  # before the interpreter exits (see torchrun_train.py)
    dist.barrier()
    dist.destroy_process_group()


def train(train_loader, model, criterion, optimizer, epoch, device, args):
    model.train()
    record = seen.setdefault(epoch, {"count": 0, "batches": 0, "dtypes": [], "shapes": [], "mean": 0.0})
    for i, (images, target) in enumerate(train_loader):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        loss = criterion(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        record["count"] += len(target)
        record["batches"] += 1
        record["dtypes"] = sorted(set(record["dtypes"]) | {str(images.dtype)})
        record["shapes"] = sorted(set(map(tuple, record["shapes"])) | {tuple(images.shape[1:])})
        record["mean"] += float(images.mean()) / len(train_loader)


def validate(val_loader, model, device):
    model.eval()
    count = torch.zeros(1)
    with torch.no_grad():
        for images, target in val_loader:
            model(images.to(device))
            count += len(target)
    dist.all_reduce(count)
    return int(count.item())


def save_checkpoint(state, filename):
    torch.save(state, filename + ".tmp")
    shutil.move(filename + ".tmp", filename)


if __name__ == '__main__':
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--start-epoch", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--resume", default="")
    parser.add_argument("--snippet", default="")
    parser.add_argument("--dummy", action="store_true")
    args = parser.parse_args()
    args.checkpoint = os.path.join(args.out, "checkpoint.pth.tar")
    main_worker(args)
