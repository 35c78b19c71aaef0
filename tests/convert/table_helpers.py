"""Real tables for the converter's tests: image + caption tables as CSV, JSONL and Parquet files
(with the images beside them), tabular features as .npz, .npy + labels, CSV and Parquet, and
webdataset tars written by webdataset itself."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import webdataset as wds

import datagen

TABLE_FORMATS = ("csv", "jsonl", "parquet")
TABULAR_FORMATS = ("npz", "npy", "csv", "parquet")


def caption_rows(root: Path, n: int = 12, seed: int = 0) -> list[dict]:
    """``n`` rows ``{path, caption, label, score}`` with a real JPEG (or PNG every fifth row)
    written at ``root/imgs/`` for each."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        fmt, ext = ("PNG", "png") if i % 5 == 4 else ("JPEG", "jpg")
        rel = f"imgs/{i:03d}.{ext}"
        datagen.write_image(root / rel, "RGB", fmt, rng)
        rows.append({"path": rel, "caption": f"a photo of thing {i}, \"quoted\"\nand a second line",
                     "label": i % 4, "score": round(i / 7, 6)})
    return rows


def write_table(path: Path, rows: list[dict], fmt: str, *, row_group_size: int | None = None) -> Path:
    """``rows`` (dicts with the same keys) as a CSV, JSONL or Parquet file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def features(n: int, width: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(float32 n × width, int64 labels < 7)``, values exact in decimal text (CSV round trips them)."""
    rng = np.random.default_rng(seed)
    x = (rng.integers(-10_000, 10_000, (n, width)) / 64).astype(np.float32)  # binary fractions: exact as text
    y = rng.integers(0, 7, n).astype(np.int64)
    return x, y


def write_tabular(folder: Path, x: np.ndarray, y: np.ndarray, fmt: str, *, row_group_size: int | None = None
                  ) -> tuple[Path, dict]:
    """The rows as a tabular source of format ``fmt``; returns ``(src, convert kwargs)``."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        np.savez(folder / "d.npz", features=x, label=y)
        return folder / "d.npz", {}
    if fmt == "npy":
        np.save(folder / "X.npy", x)
        np.save(folder / "y.npy", y)
        return folder / "X.npy", {"labels": folder / "y.npy"}
    rows = [{**{f"f{j}": float(v) for j, v in enumerate(row)}, "label": int(label)} for row, label in zip(x, y)]
    return write_table(folder / f"d.{fmt}", rows, fmt, row_group_size=row_group_size), {}


def write_tars(folder, tars=3, per_tar=8, seed=0):
    """webdataset tars of ``{jpg, txt, json, cls}`` samples; returns the samples by caption."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, samples = np.random.default_rng(seed), {}
    for t in range(tars):
        with wds.TarWriter(str(folder / f"old-{t:06d}.tar")) as w:
            for i in range(per_tar):
                sample = {"__key__": f"{t:03d}/{i:05d}", "jpg": datagen.encode_image("RGB", "JPEG", rng),
                          "txt": f"caption {t}-{i}", "json": {"t": t, "i": i}, "cls": i % 3}
                w.write(sample)
                samples[sample["txt"]] = sample
    return samples
