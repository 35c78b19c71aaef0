"""DeviceLoader: images to normalised floats, everything else moved as it is (CPU here; CUDA when present)."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from shardkit.stream.dataset import StreamingDataset
from shardkit.stream.device import DeviceLoader
from shardkit.stream.loader import make_loader

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="needs a CUDA device"))]


def batches(n=3, hw=(8, 6), b=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (b, 3, *hw), dtype=torch.uint8, generator=g), torch.arange(b) + i,
             {"mask": torch.ones(b, 2, dtype=torch.bool)}) for i in range(n)]


def reference(images, mean=MEAN, std=STD):
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (images.double() / 255 - m) / s


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("hw, b", [((8, 6), 4), ((300, 330), 5)], ids=["small", "chunked"])  # chunked: > 1 MiB of floats per image
def test_images_become_normalised_floats(device, channels_last, hw, b):
    source = batches(hw=hw, b=b)
    out = list(DeviceLoader(source, device, MEAN, STD, channels_last=channels_last))
    assert len(out) == 3
    for (images, labels, extra), (raw, raw_labels, raw_extra) in zip(out, source):
        assert images.device.type == device and images.dtype == torch.float32
        assert images.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert torch.allclose(images.cpu().double(), reference(raw), atol=1e-5)
        assert labels.dtype == torch.int64 and torch.equal(labels.cpu(), raw_labels)
        assert extra["mask"].dtype == torch.bool and extra["mask"].device.type == device


def test_without_mean_and_std_images_are_scaled_to_0_1():
    (images, *_), = DeviceLoader(batches(1), "cpu")
    raw = batches(1)[0][0]
    assert torch.allclose(images, raw.float() / 255) and 0 <= images.min() and images.max() <= 1


def test_half_precision_output():
    (images, *_), = DeviceLoader(batches(1), "cpu", MEAN, STD, dtype=torch.float16)
    assert images.dtype == torch.float16
    assert torch.allclose(images.double(), reference(batches(1)[0][0]), atol=2e-2)


@pytest.mark.parametrize("kwargs, match", [(dict(mean=MEAN), "both"), (dict(mean=(0.5,) * 2, std=STD), "same length"),
                                           (dict(mean=MEAN, std=(0.2, 0, 0.2)), "std > 0")])
def test_bad_statistics(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeviceLoader([], "cpu", **kwargs)


def test_channel_count_mismatch():
    with pytest.raises(ValueError, match="4 channels"):
        list(DeviceLoader(batches(1), "cpu", (0.5,) * 4, (0.2,) * 4))


def test_with_a_real_loader(image_root, seq_root):
    tf = v2.RandomResizedCrop(16)
    loader = make_loader(StreamingDataset(image_root, transform=tf), 8, num_workers=2)
    device = DeviceLoader(loader, "cpu", MEAN, STD)
    got = list(device)
    assert len(device) == len(loader) == len(got) and all(b[0].dtype == torch.float32 for b in got)
    assert sum(len(b[1]) for b in got) == 30
    seqs = list(DeviceLoader(make_loader(StreamingDataset(seq_root), 10, num_workers=0), "cpu", MEAN, STD))
    assert all(b[0].dtype == torch.int64 for b in seqs), "tokens pass through as int64"


def test_reused_cpu_buffers_never_overwrite_a_batch_still_held():
    source = batches(8)
    kept, views = [], []
    for i, (images, labels, _) in enumerate(DeviceLoader(source, "cpu", MEAN, STD)):
        if i % 2 == 0:
            kept.append((i, images))  # the consumer keeps some batches...
        else:
            views.append((i, images[1:3]))  # ...and only views of others
    for i, images in kept:
        assert torch.allclose(images.double(), reference(source[i][0]), atol=1e-5)
    for i, view in views:
        assert torch.allclose(view.double(), reference(source[i][0])[1:3], atol=1e-5)


def test_cpu_buffers_are_reused_once_dropped():
    addresses = {images.data_ptr() for images, _, _ in DeviceLoader(batches(8), "cpu", MEAN, STD)}
    assert len(addresses) <= 2, "the loop variable holds one batch while the next is made"


@pytest.mark.parametrize("device", DEVICES)
def test_real_loader_on_each_device_gives_the_cpu_values(image_root, device):
    """Pinned batches (when CUDA is there) copied one ahead on a side stream equal the CPU path."""
    def run(dev):
        loader = make_loader(StreamingDataset(image_root, transform=v2.RandomResizedCrop(16)), 8, num_workers=2)
        return [(x.cpu(), y.cpu()) for x, y in DeviceLoader(loader, dev, MEAN, STD)]

    on_device, on_cpu = run(device), run("cpu")
    assert len(on_device) == len(on_cpu) == 4
    for (x, y), (cx, cy) in zip(on_device, on_cpu):
        assert torch.equal(y, cy) and torch.allclose(x, cx, atol=1e-5)
