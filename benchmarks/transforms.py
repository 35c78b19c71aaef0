"""The training transforms every image contender applies: the classic tutorial's PIL pipeline and
its uint8 tensor equivalent (torchvision.transforms.v2), with ImageNet's mean and std."""

from __future__ import annotations

import io

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import v2

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = 224


def pil_train() -> transforms.Compose:
    """PIL image → normalised float32 3×224×224 (ImageNet example's training transform)."""
    return transforms.Compose([transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def uint8_train() -> v2.Compose:
    """uint8 C×H×W tensor → uint8 3×224×224; float conversion and normalisation happen later, on
    the batch (on the device when there is one)."""
    return v2.Compose([v2.RandomResizedCrop(SIZE, antialias=True), v2.RandomHorizontalFlip()])


class PILFromBytes:
    """Encoded image bytes → the PIL training transform (for loaders that hand out raw bytes)."""

    def __init__(self):
        self.transform = pil_train()

    def __call__(self, data: bytes) -> torch.Tensor:
        return self.transform(Image.open(io.BytesIO(data)).convert("RGB"))


class Normalize:
    """A uint8 B×3×H×W batch → float32, scaled to [0, 1] and normalised (in the consuming process),
    for the peers that hand out uint8 batches: one conversion and an in-place multiply-add, on one
    thread on the CPU (a second would spin on the cores the DataLoader workers decode on), as a
    careful user of those loaders writes it. ``(x.float() - mean) / std`` on torch's default threads
    cost 93 ms per 64×3×224×224 batch beside 2 workers, this 19 ms (shardkit's DeviceLoader, which
    also reuses its buffers: 7.7 ms)."""

    def __init__(self, device: str | torch.device = "cpu"):
        mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        self.scale = (1 / (255 * std)).to(device)
        self.shift = (-mean / std).to(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.device.type != "cpu":
            return images.float().mul_(self.scale).add_(self.shift)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return images.float().mul_(self.scale).add_(self.shift)
        finally:
            torch.set_num_threads(threads)


def count_images(batch) -> int:
    """Samples in a training batch, after checking it is what every contender must deliver:
    normalised float32 B×3×224×224 images and B labels."""
    images, labels = batch[0], batch[1]
    if images.dtype != torch.float32 or tuple(images.shape[1:]) != (3, SIZE, SIZE) or len(labels) != len(images):
        raise TypeError(f"expected float32 B×3×{SIZE}×{SIZE} images with B labels, got {images.dtype} "
                        f"{tuple(images.shape)} and {len(labels)} labels")
    return len(images)
