# ruff: noqa: E402  (imports follow the sys.path fix below)
"""Benchmark of `broden dissect` on this machine, against baselines measured in the same run.

For ResNet-18 (the built-in ``dissect.zoo:resnet18``, random weights) on a synthetic
store with Broden-like label maps (~1,000 concepts in six categories, 224 px images,
112 px labels), for layer3 (256 units at 14×14) and layer4 (512 units at 7×7):

(a) the model's bare forward pass over the store (reading, normalising, full forward),
(b) the full dissection of the layer (``dissect.dissect``: thresholds, tally, scoring,
    files), and its tally pass alone (labels read + upsample + threshold + count),
(c) a per-unit-loop tally in the style of NetDissect-Lite on a subset, extrapolated: per
    image, per unit, skip the unit if its map's maximum is at or below the threshold,
    else upsample the map with PIL's float bilinear resize (as NetDissect-Lite's
    ``imresize(mode="F")``), threshold, and bincount the labels of all pixel layers at
    the active pixels (plus whole-image labels and the per-category bookkeeping);
(c') the same loop without the skip: every unit's map upsampled and thresholded in every
    image, as the original NetDissect's tally did.

Prints images/s of each, the overhead (b)/(a) (time of the dissection over time of the
bare forward pass; target ≤ 2) and the speed-ups of (b) and of its tally over (c)
(target ≥ 100×). Each timing is the best of ``--repeat`` runs (other processes share the
machine). Run: ``.venv/bin/python bench/dissect.py`` (``--images``, ``--subset``, ...).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# this file is named like the package it measures: keep its folder off the import path
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_here.parent))

import argparse
import json
import shutil
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from broden.store import BrodenStore, open_store
from dissect import dissect
from dissect.data import StoreBatches, iterate
from dissect.hooks import LayerCapture
from dissect.models import load_model, parse_normalize, preprocess
from dissect.synthetic import random_store

LAYERS = ("layer3", "layer4")


def get_store(path: Path, images: int) -> BrodenStore:
    stamp = path.with_name(path.name + ".json")
    want = {"images": images, "generator": 1}
    if not (path.exists() and stamp.exists() and json.loads(stamp.read_text()) == want):
        t = time.perf_counter()
        random_store(path, n_images=images)
        stamp.write_text(json.dumps(want))
        print(f"generated {path} in {time.perf_counter() - t:.1f} s")
    return open_store(path)


def bare_forward(store: BrodenStore, model: torch.nn.Module, batch: int, workers: int) -> float:
    norm = parse_normalize("imagenet")
    dev = torch.device("cpu")
    t = time.perf_counter()
    with torch.inference_mode():
        for b in iterate(StoreBatches(store, batch, images=True, labels=False), workers, dev):
            assert b.images is not None
            model(preprocess(b.images, norm, store.image_size))
    return time.perf_counter() - t


def ndl_loop(
    store: BrodenStore, feats: np.ndarray, thresholds: np.ndarray, skip: bool = True
) -> float:
    """NetDissect-Lite-style tally of ``feats`` (images 0..n-1 of the store); seconds.

    ``skip=False``: every unit's map is upsampled and thresholded, as the original
    NetDissect's per-image tally did (no test of the map's maximum first)."""
    n, U = feats.shape[:2]
    L = store.label_size
    C = len(store.concepts)
    cats = [c.name for c in store.categories]
    labelcat = np.zeros((C + 1, len(cats)))
    for c in store.concepts:
        labelcat[c.id, cats.index(c.category)] = 1
    both = np.zeros((U, C + 1), np.int64)
    units_cat = np.zeros((U, len(cats)), np.int64)
    label_area = np.zeros(C + 1, np.int64)
    t = time.perf_counter()
    blk = store.read_block(0, n, images=False)
    for i in range(n):
        pixels = np.concatenate([blk.pixel[c][i] for c in blk.pixel])
        scalars = [int(v) for c in blk.image_labels for v in blk.image_labels[c][i] if v]
        counts = np.bincount(pixels.ravel(), minlength=C + 1)
        counts[0] = 0
        label_area += counts
        for s in scalars:
            label_area[s] += L * L
        for u in range(U):
            fmap = feats[i, u]
            if skip and fmap.max() <= thresholds[u]:
                continue
            up = np.asarray(Image.fromarray(fmap.astype(np.float32)).resize((L, L), Image.BILINEAR))
            idx = np.argwhere(up > thresholds[u])
            hist = np.bincount(pixels[:, idx[:, 0], idx[:, 1]].ravel(), minlength=C + 1)
            hist[0] = 0
            per_cat = hist @ labelcat
            both[u] += hist
            for s in scalars:
                per_cat = per_cat + labelcat[s]
                both[u, s] += len(idx)
            units_cat[u] += len(idx) * (per_cat > 0)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256, help="images in the synthetic store")
    ap.add_argument("--store", type=Path, default=Path(".bench/dissect-synthetic.zarr"))
    ap.add_argument("--subset", type=int, default=16, help="images for the per-unit loop")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="data loader workers for (a), (b)")
    ap.add_argument("--repeat", type=int, default=3, help="timings are the best of this many")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    store = get_store(args.store, args.images)
    n = len(store)
    loaded = load_model("dissect.zoo:resnet18")
    model = loaded.module
    print(
        f"store: {n} images {store.image_size}px, labels {store.label_size}px, "
        f"{len(store.concepts)} concepts; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, batch {args.batch_size}, workers {args.workers}"
    )

    t_fwd = min(
        bare_forward(store, model, args.batch_size, args.workers) for _ in range(args.repeat)
    )
    out = Path(tempfile.mkdtemp(prefix="bench-dissect-"))
    rows = []
    try:
        for layer in LAYERS:
            timed = {}
            for mode in ("auto", "no"):  # one forward pass (activations kept) / two
                best: tuple[float, Any] | None = None
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    res = dissect(
                        store,
                        model,
                        [layer],
                        out=out,
                        batch_size=args.batch_size,
                        workers=args.workers,
                        cache_activations=mode,
                        force=True,
                        progress=False,
                    )[layer]
                    dt = time.perf_counter() - t
                    if best is None or dt < best[0]:
                        best = (dt, res)
                assert best is not None
                timed[mode] = best
            t_dis, res = timed["auto"]
            t_two = timed["no"][0]
            tim = res.summary["timings"]
            t_tally = tim.get("pass2_s", float("nan"))
            # (c): the subset's activations (not timed), then the loop
            k = min(args.subset, n)
            blk = store.read_block(0, k)
            with torch.inference_mode(), LayerCapture(model, [layer]) as cap:
                x = preprocess(
                    torch.from_numpy(blk.images), parse_normalize("imagenet"), store.image_size
                )
                feats = cap.run(x)[layer].double().numpy()
            t_loop = min(ndl_loop(store, feats, res.thresholds) for _ in range(args.repeat)) * n / k
            t_all = ndl_loop(store, feats, res.thresholds, skip=False) * n / k
            rows.append((layer, res, t_dis, t_two, t_tally, t_loop, t_all, tim))
    finally:
        shutil.rmtree(out, ignore_errors=True)

    def rate(t: float) -> str:
        return f"{n / t:8.1f}"

    print()
    print(f"(a) bare forward pass (full ResNet-18):            {rate(t_fwd)} img/s")
    for layer, res, t_dis, t_two, t_tally, t_loop, t_all, tim in rows:
        U, (h, w) = res.units, res.summary["activation_shape"]
        print(
            f"\n{layer} ({U} units at {h}×{w}; {res.summary['settings']['passes']} forward pass; "
            f"{res.headline().split(': ', 1)[1]})"
        )
        print(
            f"(b) full dissection:                               {rate(t_dis)} img/s"
            f"   (thresholds pass {tim['pass1_s']:.2f} s, tally pass {t_tally:.2f} s)"
        )
        print(f"    its tally pass (labels + upsample + count):   {rate(t_tally)} img/s")
        print(
            f"(b2) full dissection with two forward passes:     {rate(t_two)} img/s"
            "   (--cache-activations no: the mode for stores whose activations do not fit)"
        )
        print(
            f"(c) per-unit loop, NetDissect-Lite style:          {rate(t_loop)} img/s"
            f"   (on {min(args.subset, n)} images, extrapolated)"
        )
        print(
            f"(c') per-unit loop, every unit (original NetDissect): {rate(t_all)} img/s"
            f"   (no max-test skip; on {min(args.subset, n)} images, extrapolated)"
        )
        print(f"overhead (b)/(a), time:        {t_dis / t_fwd:6.2f}×   (target ≤ 2×)")
        print(f"overhead (b2)/(a), time:       {t_two / t_fwd:6.2f}×")
        print(f"speed-up (b) over (c):         {t_loop / t_dis:6.2f}×   (target ≥ 100×)")
        print(f"speed-up tally over (c):       {t_loop / t_tally:6.1f}×")
        print(f"speed-up (b) over (c'):        {t_all / t_dis:6.2f}×")
        print(f"speed-up tally over (c'):      {t_all / t_tally:6.1f}×")


if __name__ == "__main__":
    main()
