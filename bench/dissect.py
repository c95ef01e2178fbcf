# ruff: noqa: E402  (imports follow the sys.path fix below)
"""Benchmark of `broden dissect` on this machine, against baselines measured in the same run.

For ResNet-18 (the built-in ``dissect.zoo:resnet18``, random weights) on a synthetic
store with Broden-like label maps (~1,000 concepts in six categories, 224 px images,
112 px labels), for layer3 (256 units at 14×14) and layer4 (512 units at 7×7):

(a) the model's bare forward pass over the store (reading, normalising, full forward),
(b) the full dissection of the layer (``broden.dissect.dissect``: thresholds, tally, scoring,
    files), and its tally pass alone (labels read + upsample + threshold + count),
(c) a per-unit-loop tally in the style of NetDissect-Lite on a subset, extrapolated: per
    image, per unit, skip the unit if its map's maximum is at or below the threshold,
    else upsample the map with PIL's float bilinear resize (as NetDissect-Lite's
    ``imresize(mode="F")``), threshold, and bincount the labels of all pixel layers at
    the active pixels (plus whole-image labels and the per-category bookkeeping);
(c') the same loop without the skip: every unit's map upsampled and thresholded in every
    image, as the original NetDissect's tally did.

Then **the tally alone at Broden-scale shapes**: ``broden.dissect.tally.Tally`` (the real tally)
with U = 512 units of 7×7 activations upsampled to 112×112 against ~1,200 concepts, on a
synthetic store with Broden-like label density (objects as Voronoi regions, two part
layers, materials, colors per pixel, scenes and textures per image) and synthetic
post-ReLU activations (a per image and unit log-normal gain, so that each unit's top
0.5 % of values concentrate in some images, as a trained network's do; thresholds are
each unit's exact top-0.5 % quantile, as the dissection computes them), labels and
activations in memory: images/s, against the per-unit loops (c), (c') on the same
shapes on a subset.

Prints Markdown tables with images/s of each, the overhead (b)/(a) (time of the
dissection over time of the bare forward pass; target ≤ 2) and the speed-ups of (b) and
of the tally over (c) (target ≥ 100×), and writes its section of ``bench/RESULTS.md``.
Each timing is the best of ``--repeat`` runs (other processes share the machine). Run:
``.venv/bin/python bench/dissect.py`` (``--images``, ``--subset``, ..., ``--quick`` for a
smoke run, ``--results PATH``).
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

from bench.results_file import RESULTS, Run, md_table, write_section
from broden.dissect import dissect
from broden.dissect.concepts import select_concepts
from broden.dissect.data import StoreBatches, iterate
from broden.dissect.hooks import LayerCapture
from broden.dissect.models import load_model, parse_normalize, preprocess
from broden.dissect.settings import DissectSettings as S
from broden.dissect.synthetic import random_store
from broden.dissect.tally import LabelTables, Tally, threshold_for_dtype
from broden.store import BrodenStore, open_store

LAYERS = ("layer3", "layer4")


def get_store(path: Path, images: int, **shape: int) -> BrodenStore:
    """The synthetic store at ``path``, generated unless one of these parameters is there."""
    stamp = path.with_name(path.name + ".json")
    want = {"images": images, "generator": 1, **shape}
    if not (path.exists() and stamp.exists() and json.loads(stamp.read_text()) == want):
        t = time.perf_counter()
        random_store(path, n_images=images, **shape)
        stamp.write_text(json.dumps(want))
        print(f"generated {path} in {time.perf_counter() - t:.1f} s", flush=True)
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


def synthetic_activations(n: int, units: int, size: int, seed: int = 1) -> np.ndarray:
    """(n, units, size, size) float32 post-ReLU maps: Gaussian noise through a ReLU, times
    a log-normal gain per image and unit (each unit responds strongly in a few images)."""
    rng = np.random.default_rng(seed)
    gain = rng.lognormal(0.0, 1.5, size=(n, units, 1, 1)).astype(np.float32)
    noise = rng.standard_normal((n, units, size, size), dtype=np.float32)
    return np.maximum(noise, 0) * gain


def top_quantile_thresholds(acts: np.ndarray, q: float = 0.005) -> np.ndarray:
    """Each unit's top-``q`` quantile over every image and position at the layer's own
    resolution: the dissection's default (``exact``) thresholds, float64."""
    U = acts.shape[1]
    values = acts.transpose(1, 0, 2, 3).reshape(U, -1).astype(np.float64)
    return np.quantile(values, 1 - q, axis=1)


def tally_bench(
    path: Path, images: int, subset: int, batch: int, repeat: int, units: int = 512, h: int = 7
) -> str:
    """The tally alone at Broden-scale shapes against the per-unit loops (see the module
    docstring); Markdown."""
    # ~1,200 concepts: 11 colors, 720 objects, 320 parts, 30 materials, 100 scenes, 47 textures
    store = get_store(path, images, n_objects=720, n_parts=320)
    n, L = len(store), store.label_size
    C = len(store.concepts)
    acts = synthetic_activations(n, units, h)
    thresholds = top_quantile_thresholds(acts)
    selection = select_concepts(store)
    tables = LabelTables(selection, torch.device("cpu"))
    batches = []
    for b in iterate(StoreBatches(store, batch, images=False), 0, torch.device("cpu")):
        labels = tables.batch(b.pixel, b.image, b.counts)
        batches.append((torch.from_numpy(acts[b.start : b.stop]), labels))
    thr = threshold_for_dtype(thresholds, torch.float32)

    def run() -> Tally:
        tally = Tally(units, tables, L)
        for a, labels in batches:
            tally.add(a, thr, labels)
        return tally

    run()  # warm up (geometry caches, allocator)
    best, tally = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        tally = run()
        best = min(best, time.perf_counter() - t)
    assert tally is not None
    live = float((acts.reshape(n, units, -1).max(axis=2) > thresholds[None]).mean())
    active = float(tally.area["plain"][:, 0].sum()) / (n * units * L * L)
    k = min(subset, n)
    feats = acts[:k].astype(np.float64)
    t_loop = min(ndl_loop(store, feats, thresholds) for _ in range(repeat)) * n / k
    t_all = ndl_loop(store, feats, thresholds, skip=False) * n / k
    kp = sum(c.layers for c in store.categories if c.kind == "pixel")
    rows = [
        [f"`broden.dissect.tally.Tally` (batches of {batch}, {torch.get_num_threads()} threads)",
         f"{n}", f"{n / best:.1f}", "1×"],
        ["(c) per-unit loop, NetDissect-Lite style (skips units whose max ≤ threshold)",
         f"{k}, extrapolated", f"{n / t_loop:.1f}", f"{t_loop / best:.1f}×"],
        ["(c') per-unit loop over every unit (original NetDissect)", f"{k}, extrapolated",
         f"{n / t_all:.2f}", f"{t_all / best:.1f}×"],
    ]  # fmt: skip
    return (
        f"The tally alone at Broden-scale shapes: U = {units} units of {h}×{h} activations "
        f"upsampled to {L}×{L}, {C} concepts, {kp} pixel label layers per image "
        f"(color, object, 2 part, material) plus scene and texture labels; {n} images, "
        "labels and synthetic activations in memory (not timed), best of "
        f"{repeat}. Thresholds: each unit's top 0.5 % quantile at {h}×{h} (the dissection's "
        f"default); {100 * live:.1f} % of the "
        f"(image, unit) maps exceed their threshold somewhere, {100 * active:.2f} % of the "
        "upsampled pixels are active. Baseline: the per-unit loops on the first "
        f"{k} images of the same store and activations, extrapolated.\n\n"
        + md_table(["tally", "images", "img/s", "Tally's speed-up over it"], rows)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256, help="images in the synthetic store")
    ap.add_argument("--work", type=Path, default=_here.parent / ".bench", help="store folder")
    ap.add_argument("--subset", type=int, default=16, help="images for the per-unit loop")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="data loader workers for (a), (b)")
    ap.add_argument("--repeat", type=int, default=2, help="timings are the best of this many")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the results file to write")
    args = ap.parse_args()
    if args.quick:
        # layer4 only, one forward pass only
        args.images, args.subset, args.repeat = min(args.images, 8), 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    run_info = Run()
    layers = LAYERS[-1:] if args.quick else LAYERS
    modes = ("auto",) if args.quick else ("auto", "no")
    args.work.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    store = get_store(args.work / f"dissect-synthetic{suffix}.zarr", args.images)
    n = len(store)
    loaded = load_model("dissect.zoo:resnet18")
    model = loaded.module
    setup = (
        f"ResNet-18 (`dissect.zoo:resnet18`, random weights), synthetic store of {n} images "
        f"{store.image_size} px, labels {store.label_size} px, {len(store.concepts)} concepts; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch "
        f"{args.batch_size}, {args.workers} data loader workers; best of {args.repeat}; "
        f"per-unit loops on {min(args.subset, n)} images, extrapolated."
    )
    print(setup, flush=True)

    t_fwd = min(
        bare_forward(store, model, args.batch_size, args.workers) for _ in range(args.repeat)
    )
    out = Path(tempfile.mkdtemp(prefix="bench-dissect-"))
    rows = []
    try:
        for layer in layers:
            timed = {}
            for mode in modes:  # one forward pass (activations kept) / two
                best: tuple[float, Any] | None = None
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    res = dissect(
                        store,
                        model,
                        [layer],
                        S(
                            batch_size=args.batch_size,
                            workers=args.workers,
                            cache_activations=mode,
                            force=True,
                            progress=False,
                        ),
                        out=out,
                    )[layer]
                    dt = time.perf_counter() - t
                    if best is None or dt < best[0]:
                        best = (dt, res)
                assert best is not None
                timed[mode] = best
            t_dis, res = timed["auto"]
            t_two = timed["no"][0] if "no" in timed else float("nan")
            tim = res.summary.timings
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
            print(f"  {layer}: done", flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)

    def rate(t: float) -> str:
        return "not run (--quick)" if np.isnan(t) else f"{n / t:.1f} img/s"

    def over(t: float) -> str:
        return "not run (--quick)" if np.isnan(t) else f"{t / t_fwd:.2f}×"

    headers = [""]
    for layer, r, *_ in rows:
        h, w = r.summary.activation_shape
        headers.append(f"{layer} ({r.units} units at {h}×{w})")
    res_c = [r[1] for r in rows]
    dis_c, two_c, tally_c, loop_c, all_c = ([r[i] for r in rows] for i in range(2, 7))
    tim_c = [r[7] for r in rows]
    table = [
        ["(a) bare forward pass (full ResNet-18)", *[rate(t_fwd)] * len(rows)],
        ["(b) full dissection (one forward pass)", *map(rate, dis_c)],
        ["    its thresholds pass / tally pass",
         *[f"{t['pass1_s']:.2f} s / {t['pass2_s']:.2f} s" for t in tim_c]],
        ["    its tally pass alone (labels + upsample + count)", *map(rate, tally_c)],
        ["(b2) full dissection, model run twice (`--cache-activations no`)", *map(rate, two_c)],
        ["(c) per-unit loop, NetDissect-Lite style (skips units whose max ≤ threshold)",
         *map(rate, loop_c)],
        ["(c') per-unit loop over every unit (original NetDissect)", *map(rate, all_c)],
        ["overhead (b)/(a), time (target ≤ 2×)", *map(over, dis_c)],
        ["overhead (b2)/(a), time", *map(over, two_c)],
        ["speed-up (b) over (c) / over (c')",
         *[f"{lp / d:.2f}× / {a / d:.2f}×" for d, lp, a in zip(dis_c, loop_c, all_c, strict=True)]],
        ["speed-up of the tally pass over (c) / over (c') (target ≥ 100×)",
         *[f"{lp / t:.1f}× / {a / t:.1f}×"
           for t, lp, a in zip(tally_c, loop_c, all_c, strict=True)]],
    ]  # fmt: skip
    pairs = zip(layers, res_c, strict=True)
    found = "; ".join(f"{layer}: {r.headline().split(': ', 1)[1]}" for layer, r in pairs)
    part1 = setup + "\n\n" + md_table(headers, table) + f"\n\nResults: {found}."
    print(part1, flush=True)
    part2 = tally_bench(
        args.work / f"tally-synthetic{suffix}.zarr",
        args.images,
        args.subset,
        args.batch_size,
        args.repeat,
    )
    print(part2, flush=True)
    body = "\n\n".join(["## Dissection (`bench/dissect.py`)", run_info.preamble(), part1, part2])
    print("wrote", write_section("dissect", body, args.results))


if __name__ == "__main__":
    main()
