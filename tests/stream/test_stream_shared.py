"""Shared memory reused for batches: leases in one process, and real DataLoader workers whose
batches the consumer keeps, drops, abandons or has pinned."""

from __future__ import annotations

import gc

import pytest
import torch
from torchvision.transforms import v2

from shardkit.stream import shared
from shardkit.stream.dataset import StreamingDataset
from shardkit.stream.loader import make_loader
from shardkit.stream.shared import SharedBatches, cat, stack

BIG = (3, 256, 256)  # 8 of them are 1.5 MiB: over MIN_BYTES, so leased


def images(n=8, value=0):
    return [torch.full(BIG, value + k, dtype=torch.uint8) for k in range(n)]


@pytest.fixture
def pool():
    """A pool collecting leases as worker 1 of 2 (this process plays the worker and the main process)."""
    p = SharedBatches(2, slots=2)
    p.collect(1)
    yield p
    p.take_leases()


def test_a_large_stack_goes_into_a_leased_segment_that_is_reused_once_freed(pool):
    first = stack(images())
    (lease,) = pool.take_leases()
    assert lease.tensor is first and lease.slot in (2, 3) and int(pool.table[lease.slot]) == lease.stamp != 0
    assert torch.equal(first, torch.stack(images())) and first.is_shared()
    pointer = first.data_ptr()
    # the main process holds its own mapping of the segment: here, a tensor of its own
    received = lease._replace(tensor=first.clone())
    pool.hold([received])
    assert int(pool.table[lease.slot]) == lease.stamp
    del received
    gc.collect()
    assert pool.table.tolist() == [0, 0, 0, 0]  # freed with the last tensor using it
    pool.collect(1)
    again = stack(images(value=50))
    assert again.data_ptr() == pointer and torch.equal(again, torch.stack(images(value=50)))


def test_a_segment_still_in_use_is_never_written_and_a_full_pool_falls_back(pool):
    kept = [stack(images(value=10 * k)) for k in range(3)]  # two slots, three batches
    leases = pool.take_leases()
    assert len(leases) == 2 and not kept[2].data_ptr() in {lease.tensor.data_ptr() for lease in leases}
    pool.hold(leases)
    del leases
    pool.collect(1)
    fourth = stack(images(value=99))
    assert not pool.take_leases()  # both slots still held: a fresh segment
    for k, batch in enumerate(kept):
        assert torch.equal(batch, torch.stack(images(value=10 * k)))
    assert torch.equal(fourth, torch.stack(images(value=99)))


def test_a_late_release_never_frees_the_lease_of_a_successor(pool):
    stack(images())
    (old,) = pool.take_leases()
    pool.release(old.slot, old.stamp)
    pool.collect(1)
    stack(images())
    (new,) = pool.take_leases()
    assert new.slot == old.slot and new.stamp != old.stamp
    pool.release(old.slot, old.stamp)  # e.g. a finalizer of a batch of a stopped worker
    assert int(pool.table[new.slot]) == new.stamp


def test_sweep_frees_leases_that_never_reached_the_consumer_and_keeps_held_ones(pool):
    stack(images())
    stack(images())
    held, lost = pool.take_leases()
    pool.hold([held])
    pool.sweep()
    assert int(pool.table[held.slot]) == held.stamp and int(pool.table[lost.slot]) == 0


@pytest.mark.parametrize("tensors, leased", [(images(), True), ([torch.zeros(3, 4, dtype=torch.uint8)] * 8, False)],
                         ids=["large", "small"])
def test_only_large_results_are_leased(pool, tensors, leased):
    assert torch.equal(stack(tensors), torch.stack(tensors))
    flat = [t.reshape(-1) for t in tensors]
    assert torch.equal(cat(flat), torch.cat(flat))
    assert len(pool.take_leases()) == (2 if leased else 0)


def test_outside_a_worker_nothing_is_leased():
    assert shared._active.pool is None
    assert torch.equal(stack(images()), torch.stack(images()))


def loader(image_root, context: str | None = None, **kwargs):
    dataset = StreamingDataset(image_root, shuffle=True, seed=3, transform=v2.Resize(BIG[1:], antialias=True))
    return make_loader(dataset, 8, num_workers=2, multiprocessing_context=context, **kwargs)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_batches_the_consumer_keeps_stay_as_they_came(image_root, context):
    """Four epochs of 4 batches kept (more than the workers' slots): each equal to its copy made
    when it arrived, and the same batches as a loader without workers gives."""
    lo = loader(image_root, context)
    kept = [(images, images.clone()) for _ in range(4) for images, _ in lo]
    assert len(kept) == 16
    for images, copy in kept:
        assert torch.equal(images, copy)
    reference = loader(image_root)
    expected = [images for _ in range(4) for images, _ in reference]
    assert sorted(c.sum().item() for _, c in kept) == sorted(e.sum().item() for e in expected)


def abandon_then_finish(lo) -> list[torch.Tensor]:
    """A full epoch, three abandoned after their first batch (what was in flight is discarded),
    then the next one's batches, copied as they come and dropped."""
    list(lo)
    for _ in range(3):
        next(iter(lo))
    gc.collect()
    return [images.clone() for images, _ in lo]


def test_batches_dropped_free_their_segments_and_an_abandoned_epoch_loses_nothing(image_root):
    lo = loader(image_root)
    after = abandon_then_finish(lo)
    gc.collect()
    assert lo._shared.table.count_nonzero() == 0  # every lease freed, the discarded ones by the sweep
    expected = abandon_then_finish(loader(image_root))
    assert len(after) == len(expected) > 0
    assert all(torch.equal(a, b) for a, b in zip(after, expected))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (pinned memory)")
def test_pinned_batches_free_their_segments_at_once(image_root):
    lo = loader(image_root, pin_memory=True)
    kept = [images for images, _ in lo]
    assert all(images.is_pinned() for images in kept)
    plain = [images for images, _ in loader(image_root, pin_memory=False)]
    assert all(torch.equal(a, b) for a, b in zip(kept, plain))
