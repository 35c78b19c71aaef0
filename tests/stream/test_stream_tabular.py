"""A tabular dataset streams exactly what the tutorial's map-style ``TabularDataset`` returns:
``(float32 features [F], int64 0-d label)`` per sample; ``make_loader`` batches (gathered from the
blocks) equal ``default_collate`` of those samples, in real DataLoader workers too."""

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, default_collate

import shardkit


class TabularDataset(Dataset):
    """The classic tutorial's dataset, as benchmarks/contenders/baseline.py has it."""

    def __init__(self, x, y):
        self.X, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return torch.tensor(self.X[i], dtype=torch.float32), torch.tensor(self.y[i], dtype=torch.long)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("tabular")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 12), dtype=np.float32)
    y = rng.integers(-3, 300, 5000)  # negative and beyond int8: the blocks' label dtypes vary
    np.save(root / "X.npy", x)
    np.save(root / "y.npy", y)
    shardkit.convert(root / "X.npy", root / "ds", labels=root / "y.npy", workers=1, shuffle=False,
                     max_shard_size="100KB")
    return root / "ds", x, y


def test_samples_are_what_the_tutorials_dataset_returns(table):
    dst, x, y = table
    reference = TabularDataset(x, y)
    got = list(shardkit.StreamingDataset(dst, shuffle=False))
    assert len(got) == len(reference)
    for i in (0, 1, 777, 4999):
        features, label = got[i]
        want_f, want_l = reference[i]
        assert features.dtype == torch.float32 and features.shape == (12,) and torch.equal(features, want_f)
        assert label.dtype == torch.int64 and label.shape == () and torch.equal(label, want_l)
    assert torch.equal(default_collate(got[:64])[1], default_collate([reference[i] for i in range(64)])[1])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_make_loader_batches_equal_default_collate_of_the_same_samples(table, num_workers):
    dst, x, y = table
    dataset = shardkit.StreamingDataset(dst, shuffle=True, seed=4)
    samples = list(shardkit.StreamingDataset(dst, shuffle=True, seed=4))
    by_row = {f.numpy().tobytes(): int(label) for f, label in samples}
    batches = list(shardkit.make_loader(dataset, 64, num_workers=num_workers))
    assert sum(len(b[1]) for b in batches) == 5000
    seen = set()
    for features, labels in batches:
        assert features.dtype == torch.float32 and features.shape[1:] == (12,) and labels.dtype == torch.int64
        for row, label in zip(features.numpy(), labels.tolist()):
            assert by_row[row.tobytes()] == label
            seen.add(row.tobytes())
    assert len(seen) == 5000  # every row exactly once


def test_a_transform_and_decode_false(table):
    dst, x, y = table
    doubled = list(shardkit.StreamingDataset(dst, shuffle=False, transform=lambda f: f * 2))
    assert torch.equal(doubled[3][0], torch.from_numpy(x[3] * 2)) and int(doubled[3][1]) == y[3]
    raw = next(iter(shardkit.StreamingDataset(dst, shuffle=False, decode=False)))
    assert isinstance(raw[0], np.ndarray) and raw[0].dtype == np.float32 and raw[1] == y[0]
    # with a transform, make_loader collates sample by sample: the same batches' content
    loader = shardkit.make_loader(shardkit.StreamingDataset(dst, shuffle=False, transform=lambda f: f + 1), 100)
    first = next(iter(loader))
    assert torch.equal(first[0], torch.from_numpy(x[:100] + 1)) and first[1].tolist() == y[:100].tolist()
