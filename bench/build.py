"""Build and read throughput on the real fixture photos, against a decoding baseline.

Prints, in one run on this machine:

- **build**: images/s per worker at S=224 of the build's per-sample work (decode the
  source files, count label statistics and colors at source resolution, resize the
  image, sample the label maps), per source; next to the **baseline** of decoding the
  same source JPEG/PNG files with OpenCV (and .mat files with scipy); plus the wall
  time of a complete one-worker build (staging, unify, writing, finalize).
- **read**: images with all their label layers per second from the store built from
  those photos (replicated to 512 images): per-image reads in one process, shard-aligned
  block reads, and a 2-worker torch DataLoader; next to the baseline of decoding the
  images' source files.

    .venv/bin/python bench/build.py
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

S = 224
SHARD = 64


def available_sources() -> list[dict]:
    """Config entries for the real-photo sources bundled in the repository."""
    from adapters import available_adapters

    data = REPO / "tests" / "data"
    found = [{"adapter": "ade20k", "root": str(REPO / "samples/ade20k/ADE20K_2021_17_01")}]
    adapters = available_adapters()
    if "ade20k_sceneparsing" in adapters and (data / "ade20k_sceneparsing").exists():
        root = next((data / "ade20k_sceneparsing").glob("ADEChallengeData2016"), None)
        if root is not None:
            found.append(
                {"adapter": "ade20k_sceneparsing", "root": str(root), "splits": ["validation"]}
            )
    if "pascal" in adapters and (data / "pascal_part").exists():
        found.append(
            {
                "adapter": "pascal",
                "images": str(data / "pascal_part" / "VOCdevkit" / "VOC2010" / "JPEGImages"),
                "parts": str(data / "pascal_part"),
            }
        )
    return found


def source_files(adapter, index: int) -> list[Path]:
    """The files a sample is decoded from (for the baseline)."""
    sid = adapter.source_id(index)
    name = adapter.name
    if name == "ade20k":
        jpg = adapter.options.root / sid
        stem = str(jpg)[:-4]
        files = [jpg, Path(stem + "_seg.png")]
        k = 1
        while Path(f"{stem}_parts_{k}.png").exists():
            files.append(Path(f"{stem}_parts_{k}.png"))
            k += 1
        return files
    if name == "ade20k_sceneparsing":
        jpg = adapter.options.root / sid
        ann = Path(str(jpg).replace("/images/", "/annotations/"))
        return [jpg, ann.with_suffix(".png")]
    if name == "pascal":
        stem = Path(sid).stem
        files = [adapter.options.images / f"{stem}.jpg"]
        if adapter.options.parts is not None:
            files.append(adapter.options.parts / "Annotations_Part" / f"{stem}.mat")
        return files
    raise ValueError(name)


def decode_baseline(files: list[Path]) -> None:
    import cv2
    import scipy.io

    for f in files:
        if f.suffix == ".mat":
            scipy.io.loadmat(f)
        else:
            flags = cv2.IMREAD_COLOR if f.suffix == ".jpg" else cv2.IMREAD_UNCHANGED
            assert cv2.imread(str(f), flags) is not None, f


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def best_of(fn: Callable[[], None], reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_build(entries: list[dict]) -> None:
    from broden.build import make_plan, prepare_sample
    from broden.config import parse_config

    cfg = parse_config({"image_size": S, "min_frequency": 1, "min_coverage": 0, "sources": entries})
    plan = make_plan(cfg)
    print(f"== build, per worker, S={S} (best of 3 passes) ==")
    print(f"  {'source':<22}{'images':>7}{'mean size':>12}{'build img/s':>14}"
          f"{'decode-only img/s':>20}{'build/decode':>14}")  # fmt: skip
    total_b = total_d = 0.0
    total_n = 0
    for src in plan.sources:
        n = len(src.adapter)
        sizes = []

        def run_build(src=src, n=n, sizes=sizes) -> None:
            sizes.clear()
            for i in range(n):
                p = prepare_sample(src, i, S, S // 2)
                sizes.append(p.orig_size[0] * p.orig_size[1])

        files = [source_files(src.adapter, i) for i in range(n)]
        run_build()  # warm up (imports, caches)
        tb = best_of(run_build)
        td = best_of(lambda files=files: [decode_baseline(f) for f in files])
        total_b, total_d, total_n = total_b + tb, total_d + td, total_n + n
        mp = statistics.mean(sizes) / 1e6
        print(f"  {src.name:<22}{n:>7}{mp:>10.2f}MP{rate(n, tb):>14.1f}{rate(n, td):>20.1f}"
              f"{tb / td:>13.2f}×")  # fmt: skip
    print(f"  {'all':<22}{total_n:>7}{'':>12}{rate(total_n, total_b):>14.1f}"
          f"{rate(total_n, total_d):>20.1f}{total_b / total_d:>13.2f}×")  # fmt: skip


def bench_full_build(entries: list[dict], out: Path) -> None:
    import shutil

    from broden.build import build
    from broden.config import parse_config

    cfg = parse_config(
        {"image_size": S, "min_frequency": 1, "min_coverage": 0, "task_size": 8, "sources": entries}
    )
    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    summary = build(cfg, out, workers=1, progress=False)
    dt = time.perf_counter() - t
    per_s = rate(summary.images, dt)
    print(f"  complete build, 1 worker: {summary.images} images in {dt:.2f} s "
          f"({per_s:.1f} img/s incl. staging, unify, write, finalize)")  # fmt: skip


def replicate(src: Path, dst: Path, n: int) -> None:
    """A store of n images made of copies of src's images (same content, same codecs)."""
    import shutil

    import zarr

    from broden.store import (
        CONCEPTS_ATTR,
        DIGESTS_ATTR,
        STORE_ATTR,
        Block,
        create_arrays,
        open_store,
        write_block,
    )

    store = open_store(src)
    blk = store.read_block(0, len(store))
    if dst.exists():
        shutil.rmtree(dst)
    g = zarr.open_group(str(dst), mode="w")
    attrs = store.attrs.model_copy(update={"images": n, "shard_size": SHARD, "complete": False})
    g.attrs[STORE_ATTR] = attrs.model_dump(mode="json")
    g.attrs[CONCEPTS_ATTR] = [c.model_dump(mode="json") for c in store.concepts]
    create_arrays(g, n, store.image_size, store.label_size, SHARD, store.categories)
    digests: dict[str, list[str]] = {}
    for start in range(0, n, SHARD):
        idx = np.arange(start, min(start + SHARD, n)) % len(store)
        part = Block(
            images=blk.images[idx],
            pixel={c: a[idx] for c, a in blk.pixel.items()},
            image_labels={c: a[idx] for c, a in blk.image_labels.items()},
            source=[blk.source[i] for i in idx],
            source_id=[f"{blk.source_id[i]}#{start + k}" for k, i in enumerate(idx)],
            split=[blk.split[i] for i in idx],
            orig_size=blk.orig_size[idx],
        )
        for name, d in write_block(g, start, part).items():
            digests.setdefault(name, []).append(d)
    for name, ds in digests.items():
        g[name].attrs[DIGESTS_ATTR] = ds
    attrs.complete = True
    g.attrs[STORE_ATTR] = attrs.model_dump(mode="json")


class StoreDataset:
    """The minimal torch Dataset over a store: one image with all its label layers."""

    def __init__(self, path: Path):
        from broden.store import open_store

        self.store = open_store(path)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        s = self.store.sample(i)
        return s.image, {**s.pixel, **s.image_labels}


def bench_read(built: Path, replicated: Path, entries: list[dict]) -> None:
    import torch
    from torch.utils.data import DataLoader

    from broden.build import make_plan
    from broden.config import parse_config
    from broden.store import open_store

    n = 512
    replicate(built, replicated, n)
    store = open_store(replicated)
    order = np.random.default_rng(0).permutation(n)
    print(f"== read: images with all label layers, store of {n} copies of the real photos ==")
    t_one = best_of(lambda: [store.sample(int(i)) for i in order])
    t_block = best_of(lambda: [store.read_block(a, b) for a, b in store.shards()])
    ds = StoreDataset(replicated)
    loader = DataLoader(ds, batch_size=32, num_workers=2, shuffle=True,
                        collate_fn=lambda batch: batch, persistent_workers=False)  # fmt: skip
    torch.set_num_threads(1)
    t_loader = best_of(lambda: [None for _ in loader], reps=2)
    cfg = parse_config({"image_size": S, "sources": entries})
    plan = make_plan(cfg)
    files = [source_files(src.adapter, i) for src in plan.sources for i in range(len(src.adapter))]
    per_image = best_of(lambda: [decode_baseline(f) for f in files]) / len(files)
    print(f"  store, one image per call, random order (1 process): {rate(n, t_one):9.0f} img/s")
    print(f"  store, shard-aligned blocks (1 process):             {rate(n, t_block):9.0f} img/s")
    print(f"  store, torch DataLoader, 2 workers:                   {rate(n, t_loader):9.0f} img/s")
    print(f"  baseline: cv2 decoding of the source files:          {1 / per_image:9.0f} img/s")
    print(f"  store per-image read vs source decode: {per_image / (t_one / n):.0f}× faster")


def main() -> None:
    entries = available_sources()
    print("sources:", ", ".join(e["adapter"] for e in entries))
    bench_build(entries)
    work = REPO / ".bench"
    work.mkdir(exist_ok=True)
    bench_full_build(entries, work / "bench-build.zarr")
    bench_read(work / "bench-build.zarr", work / "bench-read.zarr", entries)


if __name__ == "__main__":
    main()
