"""Which lossless codec for the store's images and label maps?

Compresses the real fixture photos (resized to 224, as the store holds them) and the
sample store's label maps with the zstd levels and Blosc variants zarr offers, and
prints ratio and encode/decode speed per image. The store uses zstd level 1 for images
and level 3 for labels (see broden/store.py); rerun this to check that choice:

    .venv/bin/python bench/codecs.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from numcodecs import LZ4, Blosc, Zstd
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def photos() -> list[Path]:
    """The real photos bundled in the repository (not the generated DTD textures)."""
    found = sorted((REPO / "samples" / "ade20k").rglob("*.jpg"))
    for sub in ("pascal_part", "ade20k_sceneparsing", "coco_panoptic"):
        found += sorted((REPO / "tests" / "data" / sub).rglob("*.jpg"))
    return found


def measure(name: str, codec, arrays: list[np.ndarray], reps: int = 3) -> None:
    enc = [codec.encode(a) for a in arrays]
    t = time.perf_counter()
    for _ in range(reps):
        enc = [codec.encode(a) for a in arrays]
    te = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    for _ in range(reps):
        for e in enc:
            codec.decode(e)
    td = (time.perf_counter() - t) / reps
    ratio = sum(a.nbytes for a in arrays) / sum(len(e) for e in enc)
    n = len(arrays)
    print(f"  {name:<24} ratio {ratio:5.2f}   encode {n / te:8.0f}/s   decode {n / td:8.0f}/s")


def main() -> None:
    from broden.build import build
    from broden.config import load_config
    from broden.store import open_store

    files = photos()
    images = [
        np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
        for f in files
    ]
    codecs = {
        "zstd level 1 (images)": Zstd(level=1),
        "zstd level 3 (labels)": Zstd(level=3),
        "zstd level 9": Zstd(level=9),
        "lz4": LZ4(),
        "blosc zstd5 bitshuffle": Blosc("zstd", 5, Blosc.BITSHUFFLE),
        "blosc lz4": Blosc("lz4", 5, Blosc.NOSHUFFLE),
    }
    print(
        f"{len(images)} real photos at 224×224 ({sum(a.nbytes for a in images) / 1e6:.1f} MB raw)"
    )
    for name, c in codecs.items():
        measure(name, c, images)

    out = REPO / ".bench" / "codecs-sample.zarr"
    build(load_config(REPO / "samples" / "broden-sample.yaml"), out, progress=False)
    store = open_store(out)
    labels = []
    for i in range(len(store)):
        pixel, _ = store.labels(i)
        labels.extend(np.ascontiguousarray(a) for a in pixel.values())
    print(f"{len(labels)} label layers of the sample store (uint16, 112×112 × K)")
    for name in ("zstd level 1 (images)", "zstd level 3 (labels)", "zstd level 9", "lz4"):
        measure(name, codecs[name], labels)


if __name__ == "__main__":
    main()
