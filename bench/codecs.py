# ruff: noqa: E402  (imports follow the sys.path fix below)
"""Which lossless codec for the store's images and label maps?

Compresses the real fixture photos (resized to 224, as the store holds them) and the
sample store's label maps with the zstd levels and Blosc variants zarr offers, and
prints ratio and encode/decode speed per image (and writes its section of
``bench/RESULTS.md``). The store uses zstd level 1 for images and level 3 for labels
(see broden/store.py); rerun this to check that choice:

    .venv/bin/python bench/codecs.py [--quick] [--results PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path

# keep this folder off the import path (its files are named like modules: codecs, ...)
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_here.parent))

import argparse
import time
from typing import Any

import numpy as np
from numcodecs import LZ4, Blosc, Zstd
from PIL import Image

from bench.common import REPO, common_args
from bench.results_file import Run, md_table, write_section


def photos() -> list[Path]:
    """The real photos bundled in the repository (not the generated DTD textures)."""
    found = sorted((REPO / "samples" / "ade20k").rglob("*.jpg"))
    for sub in ("pascal_part", "ade20k_sceneparsing", "coco_panoptic"):
        found += sorted((REPO / "tests" / "data" / sub).rglob("*.jpg"))
    return found


def measure(name: str, codec: Any, arrays: list[np.ndarray], reps: int = 3) -> list[str]:
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
    return [name, f"{ratio:.2f}", f"{n / te:.0f}", f"{n / td:.0f}"]


def main() -> None:
    from broden.build import build
    from broden.config import load_config
    from broden.store import open_store

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_args(ap)
    ap.add_argument("--repeat", type=int, default=3, help="timings are means of this many")
    args = ap.parse_args()
    reps = 1 if args.quick else args.repeat
    run = Run()
    files = photos()[:4] if args.quick else photos()
    images = [
        np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
        for f in files
    ]
    codecs = {
        "zstd level 1 (the store's images)": Zstd(level=1),
        "zstd level 3 (the store's labels)": Zstd(level=3),
        "zstd level 9": Zstd(level=9),
        "lz4": LZ4(),
        "blosc zstd5 bitshuffle": Blosc("zstd", 5, Blosc.BITSHUFFLE),
        "blosc lz4": Blosc("lz4", 5, Blosc.NOSHUFFLE),
    }
    headers = ["codec", "ratio", "encode /s", "decode /s"]
    raw = sum(a.nbytes for a in images) / 1e6
    t1 = md_table(headers, [measure(name, c, images, reps) for name, c in codecs.items()])
    text1 = f"{len(images)} real photos at 224×224 ({raw:.1f} MB raw), per image:\n\n{t1}"
    print(text1, flush=True)

    args.work.mkdir(parents=True, exist_ok=True)
    out = args.work / "codecs-sample.zarr"
    sample = load_config(REPO / "samples" / "broden-sample.yaml")
    build(sample, out, progress=False, overwrite=True)
    store = open_store(out)
    labels = []
    for i in range(len(store)):
        pixel, _ = store.labels(i)
        labels.extend(np.ascontiguousarray(a) for a in pixel.values())
    names = [n for n in codecs if not n.startswith("blosc")]
    t2 = md_table(headers, [measure(name, codecs[name], labels, reps) for name in names])
    text2 = (
        f"{len(labels)} label layers of the sample store (uint16, 112×112 × K), per layer "
        f"array:\n\n{t2}"
    )
    print(text2, flush=True)
    body = "\n\n".join(
        [
            "## Codecs (`bench/codecs.py`)",
            run.preamble(),
            f"Lossless codecs (numcodecs), mean of {reps} passes; the baseline is the raw "
            "size (ratio 1).",
            text1,
            text2,
        ]
    )
    print("wrote", write_section("codecs", body, args.results))


if __name__ == "__main__":
    main()
