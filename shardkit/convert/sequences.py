"""Sequence files in two passes, both in worker processes.

Pass 1 (:class:`ScanRange`) reads byte ranges of the files (aligned to line starts) and keeps,
per valid record, only where it is and its size, largest id and label: memory is a few integers
per record, never the tokens. Pass 2 (:class:`BlockChunk`) re-reads the records of one token block
in plan order and encodes them at the dataset's dtype, known only once pass 1 has seen every id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SourceError
from ..format.blocks import token_layout
from ..format.records import NO_LABEL, sample_key
from .names import source_path
from .output import ChunkResult
from .plan import SequenceTable
from .sources import RecordError, SequenceSource, is_blank, parse_line, skip_entry

#: Bytes of a file one pass-1 task reads: large enough to amortise the task, small enough to spread.
SCAN_RANGE_BYTES = 16 << 20


@dataclass
class ScanResult:
    file: int
    offsets: np.ndarray
    nbytes: np.ndarray
    ntokens: np.ndarray
    labels: np.ndarray
    has_labels: bool
    max_id: int
    lines: int  # lines that start in the range, blank ones included
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line in the range, 1-based; reason)


@dataclass(frozen=True)
class ScanRange:
    """A pass-1 task: the records whose line starts in ``[start, end)`` of one file."""

    path: str | bytes  # where the file is (names.source_path)
    file: int
    fmt: str
    start: int
    end: int
    tokens_field: str
    label_field: str

    @property
    def nbytes(self) -> int:
        """Source bytes it reads (the progress bar's unit)."""
        return self.end - self.start

    def __call__(self) -> ScanResult:
        offsets, nbytes, ntokens, labels, skipped = [], [], [], [], []
        has_labels, max_id, line_no = False, 0, 0
        with open(self.path, "rb", buffering=1 << 20) as f:
            pos = self.start
            if pos > 0:
                f.seek(pos - 1)
                if f.read(1) != b"\n":
                    pos += len(f.readline())  # the line under way belongs to the previous range
            while pos < self.end:
                line = f.readline()
                if not line:
                    break
                line_no += 1
                if not is_blank(line):
                    try:
                        tokens, label = parse_line(line, self.fmt, self.tokens_field, self.label_field)
                    except RecordError as err:
                        skipped.append((line_no, err.reason))
                    else:
                        offsets.append(pos)
                        nbytes.append(len(line))
                        ntokens.append(len(tokens))
                        max_id = max(max_id, int(tokens.max()))
                        if label is not None:
                            has_labels = True
                        labels.append(NO_LABEL if label is None else label)
                pos += len(line)
        return ScanResult(self.file, np.array(offsets, np.int64), np.array(nbytes, np.int64),
                          np.array(ntokens, np.int64), np.array(labels, np.int64), has_labels, max_id,
                          line_no, skipped)


def scan_ranges(source: SequenceSource, tokens_field: str, label_field: str, workers: int = 1) -> list[ScanRange]:
    """The pass-1 tasks, in file and byte order (the order :func:`merge_scans` expects them back):
    about four per worker, between 1 MiB and ``SCAN_RANGE_BYTES`` each. How the files are cut
    changes nothing in the result."""
    total = sum(f.size for f in source.files)
    range_bytes = max(min(1 << 20, SCAN_RANGE_BYTES), min(SCAN_RANGE_BYTES, -(-total // (4 * workers))))
    tasks = []
    for i, f in enumerate(source.files):
        path = source_path(source.root, f.path)
        for start in range(0, max(f.size, 1), range_bytes):
            tasks.append(ScanRange(path, i, f.fmt, start, min(start + range_bytes, f.size), tokens_field, label_field))
    return tasks


def merge_scans(source: SequenceSource, results: list[ScanResult]) -> tuple[SequenceTable, list[dict[str, Any]]]:
    """Join pass 1's results (in task order) into one table, with skipped lines numbered per file."""
    lines_before: dict[int, int] = {}
    skipped = []
    for r in results:
        base = lines_before.get(r.file, 0)
        skipped += [skip_entry(source.files[r.file].path, reason, line=base + line) for line, reason in r.skipped]
        lines_before[r.file] = base + r.lines

    def cat(name, dtype):
        parts = [getattr(r, name) for r in results]
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    file = np.concatenate([np.full(len(r.offsets), r.file, np.int32) for r in results] or [np.zeros(0, np.int32)])
    table = SequenceTable(source, file, cat("offsets", np.int64), cat("nbytes", np.int64),
                          cat("ntokens", np.int64), cat("labels", np.int64),
                          max((r.max_id for r in results), default=0), any(r.has_labels for r in results))
    return table, skipped


@dataclass(frozen=True)
class BlockChunk:
    """A pass-2 task: encode token blocks. Each block is ``(position of its first sequence, file
    indices, byte offsets, byte lengths, token counts, labels or None)``, sequences in plan order."""

    root: str
    files: tuple[tuple[str, str], ...]  # (relative path, format)
    blocks: tuple[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None], ...]
    dtype: str
    tokens_field: str
    label_field: str

    def __call__(self) -> ChunkResult:
        members, samples, read, groups = [], 0, 0, []
        layout = token_layout(self.dtype)
        handles: dict[int, Any] = {}
        try:
            for position, file, offsets, nbytes, ntokens, labels in self.blocks:
                tokens = np.empty(int(ntokens.sum()), dtype=self.dtype)
                starts = np.concatenate([[0], np.cumsum(ntokens)])
                for i in np.lexsort((offsets, file)):  # read in file order, place in plan order
                    tokens[starts[i]:starts[i + 1]] = self._read(handles, int(file[i]), int(offsets[i]),
                                                                 int(nbytes[i]), int(ntokens[i]))
                read += int(nbytes.sum())
                samples += len(ntokens)
                members += layout.members(sample_key(position), {"tokens": tokens, "label": labels}, lengths=ntokens)
                groups.append(len(ntokens))
        finally:
            for f in handles.values():
                f.close()
        return ChunkResult(members, samples, [], read, groups)

    def _read(self, handles: dict, file: int, offset: int, nbytes: int, ntokens: int) -> np.ndarray:
        path, fmt = self.files[file]
        if file not in handles:
            handles[file] = open(source_path(self.root, path), "rb")
        f = handles[file]
        f.seek(offset)
        line = f.read(nbytes)
        try:
            tokens, _ = parse_line(line, fmt, self.tokens_field, self.label_field)
        except RecordError as err:
            tokens, _ = None, err
        if tokens is None or len(tokens) != ntokens:
            raise SourceError(f"{path}: the record at byte {offset} changed while converting; "
                              f"run the conversion again")
        return tokens
