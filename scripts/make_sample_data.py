"""Write the demo's sample data: a small ImageFolder tree (with one broken file, to show how bad
input is reported) and a JSONL file of variable-length token sequences."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import datagen  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else "data")
images = datagen.make_jpeg_tree(out / "images" / "train", classes=4, per_class=64, sizes=(160, 320))
datagen.make_image_tree(images, empty_classes=())  # PNG, GIF, BMP, TIFF, CMYK, 16-bit, ...
(images / "class00" / "broken.jpg").write_bytes(b"this is not a JPEG")
sequences = datagen.write_jsonl(out / "sequences" / "train.jsonl", datagen.random_sequences(5000, seed=0))
n_images = sum(1 for p in images.rglob("*") if p.is_file())
print(f"[demo] wrote {n_images} image files (one of them broken on purpose) under {images}")
print(f"[demo] wrote 5000 token sequences to {sequences}")
