# ruff: noqa: E402  (imports follow the sys.path fix below)
"""Benchmark of the dissection on a GPU (or the CPU), against the bare forward pass of the
same run: does ``broden dissect`` keep up with the model?

For ResNet-50 ``layer4`` (``dissect.zoo:resnet50``, 2048 units at 7×7) and ViT-B/16
``blocks.11`` (``dissect.zoo:vit_b_16``, 768 units on the 14×14 patch grid), random weights,
on a synthetic store with Broden-like labels (``broden.dissect.synthetic.random_store``;
by default 10,000 images at 224 px and 1,218 concepts, Broden's scale of concepts; built
here and reused from ``--work``):

- the data path alone: the store's images (then its labels) streamed to the device by the
  dissection's loader (``StoreBatches`` + ``iterate``: worker processes, pinned memory);
- (a) the bare forward pass: the same data path, then the model through broden's
  ``ModelRunner`` (preprocessing on the device, the layer hooked, autocast with ``--amp``),
  the same forward as the dissection's;
- (b) the full dissection of the layer, ``broden.dissect.dissect`` (thresholds, top images,
  tally, scoring, files), same batch size, workers and amp;
- (b)/(a), the dissection's rate over the forward pass's (target ≥ 80 %), and what bound
  (b) when it falls short (its recorded timings: model load and fingerprint, pass 1 = data
  + forward + thresholds, pass 2 = labels + tally, scoring and files);
- the Broden-scale dissection of ResNet-50 layer4, 63,305 images at (b)'s rate (target
  < 60 s on an H100/H200-class GPU);
- with CUDA, CPU against CUDA: one layer (ResNet-50 layer4, no amp, TF32 off) on 64 images
  dissected on each; the thresholds' largest relative difference, and whether the CUDA run
  given the CPU run's thresholds gives exactly the CPU run's IoU.

Prints Markdown tables (and writes the ``gpu`` section of ``bench/RESULTS.md`` unless
``--no-write``). Run on a GPU machine: ``bash bench/gpu.sh``; here ``.venv/bin/python
bench/gpu.py --quick --device cpu --no-write`` is the smoke run (64 images, 64 px input).
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/dissect.py is named like the package it measures: keep this folder off the import path
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_here.parent))

import argparse
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.results_file import RESULTS, Run, md_table, usable_cores, write_section
from broden.dissect import dissect
from broden.dissect.data import StoreBatches, iterate, resolve_device
from broden.dissect.models import load_model, parse_normalize
from broden.dissect.results import DissectionResult
from broden.dissect.runner import InputPrep, ModelRunner
from broden.dissect.settings import DissectSettings
from broden.dissect.synthetic import random_store
from broden.dissect.zoo import resnet50, vit_b_16
from broden.store import BrodenStore, open_store

BRODEN_IMAGES = 63_305  # images of the Broden dataset (broden1_224)
TARGET_RATIO = 0.80  # (b)/(a)
TARGET_SECONDS = 60.0  # ResNet-50 layer4 over Broden
#: ~1,200 concepts, as Broden's 1,197: 11 colors + these
FULL_SHAPE = {"n_objects": 700, "n_parts": 300, "n_materials": 40, "n_scenes": 120,
              "n_textures": 47}  # fmt: skip
QUICK_SHAPE = {"n_objects": 60, "n_parts": 30, "n_materials": 10, "n_scenes": 12,
               "n_textures": 8, "image_size": 128}  # fmt: skip
IDENTITY_IMAGES = 64


@dataclass(frozen=True)
class Case:
    """A model and the layer of it dissected."""

    title: str
    factory: Callable[[], nn.Module]
    layer: str


CASES = (
    Case("ResNet-50 `layer4`", resnet50, "layer4"),
    Case("ViT-B/16 `blocks.11`", vit_b_16, "blocks.11"),
)


@dataclass
class Measured:
    """One case's timings (seconds) and its dissection."""

    case: Case
    images_s: float
    labels_s: float
    forward_s: float
    dissect_s: float
    result: DissectionResult

    def rate(self, seconds: float) -> float:
        return len_of(self.result) / seconds


def len_of(result: DissectionResult) -> int:
    return result.summary.store.dissected_images


def get_store(path: Path, images: int, shape: dict[str, int]) -> tuple[BrodenStore, str]:
    """The synthetic store at ``path`` (generated unless one of these parameters is there)
    and how long its build took, in words."""
    stamp = path.with_name(path.name + ".json")
    want = {"images": images, "generator": 1, **shape}
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()) == want:
        return open_store(path), "reused"
    shutil.rmtree(path, ignore_errors=True)
    t = time.perf_counter()
    random_store(path, n_images=images, **shape)
    took = time.perf_counter() - t
    stamp.write_text(json.dumps(want))
    print(f"built {path} in {took:.1f} s", flush=True)
    return open_store(path), f"built in {took:.0f} s ({images / took:.0f} img/s)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stream(store: BrodenStore, args: argparse.Namespace, images: bool, labels: bool) -> float:
    """Seconds to stream the store to the device through the dissection's loader."""
    dev = args.dev
    t = time.perf_counter()
    for _ in iterate(StoreBatches(store, args.batch_size, images, labels), args.workers, dev):
        pass
    sync(dev)
    return time.perf_counter() - t


def bare_forward(
    store: BrodenStore, model: nn.Module, layer: str, args: argparse.Namespace, warm: int = 0
) -> float:
    """(a): seconds of the model's forward pass (through broden's ``ModelRunner``) to
    ``layer`` over the store, images streamed as the dissection streams them; ``warm``:
    only that many batches, untimed (cuDNN's and the allocator's first calls)."""
    loaded = load_model(model)
    prep = InputPrep(parse_normalize("imagenet"), args.size, "auto", loaded.prefix_tokens, args.amp)
    runner = ModelRunner(loaded, prep, args.dev)
    ds = StoreBatches(store, args.batch_size, images=True, labels=False)
    t = time.perf_counter()
    with torch.inference_mode(), runner.capture([layer]) as forward:
        for i, batch in enumerate(iterate(ds, 0 if warm else args.workers, args.dev)):
            assert batch.images is not None
            forward(batch.images)
            if warm and i + 1 >= warm:
                break
    sync(args.dev)
    return time.perf_counter() - t


def settings(args: argparse.Namespace, **changes: Any) -> DissectSettings:
    base = DissectSettings(
        batch_size=args.batch_size,
        workers=args.workers,
        device=str(args.dev),
        amp=args.amp,
        input_size=args.size,
        memory_budget=args.memory_budget,
        force=True,
        progress=False,
    )
    return base.replace(**changes) if changes else base


def measure(case: Case, store: BrodenStore, args: argparse.Namespace, out: Path) -> Measured:
    model = case.factory().eval().to(args.dev)
    bare_forward(store, model, case.layer, args, warm=2)
    images_s = stream(store, args, images=True, labels=False)
    labels_s = stream(store, args, images=False, labels=True)
    forward_s = bare_forward(store, model, case.layer, args)
    t = time.perf_counter()
    res = dissect(store, model, [case.layer], settings(args), out=out / "run")[case.layer]
    dissect_s = time.perf_counter() - t
    print(f"  {case.title}: forward {forward_s:.1f} s, dissection {dissect_s:.1f} s", flush=True)
    del model
    if args.dev.type == "cuda":
        torch.cuda.empty_cache()
    return Measured(case, images_s, labels_s, forward_s, dissect_s, res)


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full float32 convolutions and matrix products on CUDA (TF32 off) inside."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def identity(store: BrodenStore, args: argparse.Namespace, out: Path) -> list[str]:
    """The CPU-against-CUDA row: thresholds, and IoU given the CPU's thresholds."""
    title = f"ResNet-50 `layer4`, {len(store)} images, no amp"
    if args.dev.type != "cuda":
        return [title, "not run: no CUDA device (`--device cpu`)", "", ""]
    s = settings(args, amp=False, batch_size=min(args.batch_size, 16), workers=0)
    cpu = dissect(store, resnet50(), ["layer4"], s.replace(device="cpu"), out=out / "cpu")
    with no_tf32():
        gpu = dissect(store, resnet50(), ["layer4"], s, out=out / "gpu")
        given = dissect(
            store, resnet50(), ["layer4"], s, out=out / "given", thresholds=cpu["layer4"].thresholds
        )
    a, b, c = cpu["layer4"], gpu["layer4"], given["layer4"]
    rel = np.abs(a.thresholds - b.thresholds) / np.maximum(np.abs(a.thresholds), 1e-12)
    same_thr = "identical" if not rel.max() else f"max relative difference {rel.max():.1e}"
    counts_same = all(np.array_equal(a.counts[k], c.counts[k]) for k in a.counts)
    differ = int((a.iou != c.iou).sum())
    iou = "yes: identical IoU arrays"
    if differ:
        worst = float(np.abs(a.iou - c.iou).max())
        iou = f"no: {differ} of {a.iou.size} IoUs differ (max |Δ| {worst:.1e})"
    return [title, same_thr, "yes" if counts_same else "no", iou]


def bound(m: Measured) -> str:
    """What (b) spent beyond (a), in words: its two largest parts."""
    tim = m.result.summary.timings
    pass1, pass2 = tim.get("pass1_s", 0.0), tim.get("pass2_s", 0.0)
    parts = {
        "thresholds (pass 1 beyond (a))": max(pass1 - m.forward_s, 0.0),
        "reading labels": min(m.labels_s, pass2),
        "tally (pass 2 beyond reading labels)": max(pass2 - m.labels_s, 0.0),
        "model load + fingerprint": tim.get("model_load_s", 0.0),
        "scoring + files": tim.get("scoring_s", 0.0),
    }
    parts["set-up, probe, cache allocation"] = max(
        m.dissect_s - m.forward_s - sum(parts.values()), 0.0
    )
    top = sorted(parts.items(), key=lambda kv: -kv[1])[:2]
    over = m.dissect_s - m.forward_s
    return f"{over:.1f} s over (a), most in " + ", ".join(f"{k} {v:.1f} s" for k, v in top)


def tables(ms: list[Measured]) -> str:
    headers = [""] + [
        f"{m.case.title} ({m.result.units} units at "
        f"{'×'.join(map(str, m.result.summary.activation_shape))})"
        for m in ms
    ]

    def row(label: str, fn: Callable[[Measured], str]) -> list[str]:
        return [label, *map(fn, ms)]

    def ratio(m: Measured) -> str:
        r = m.forward_s / m.dissect_s
        return f"{100 * r:.0f} % ({'met' if r >= TARGET_RATIO else 'missed'})"

    def broden(m: Measured) -> str:
        t = BRODEN_IMAGES / m.rate(m.dissect_s)
        met = " (met)" if t < TARGET_SECONDS else " (missed)"
        return f"{t:.0f} s" + (met if m.case.layer == "layer4" else "")

    def timing(key: str) -> Callable[[Measured], str]:
        return lambda m: f"{m.result.summary.timings.get(key, float('nan')):.2f} s"

    main = [
        row("data path alone: images to the device", lambda m: f"{m.rate(m.images_s):.0f} img/s"),
        row("data path alone: labels to the device", lambda m: f"{m.rate(m.labels_s):.0f} img/s"),
        row("(a) bare forward pass", lambda m: f"{m.rate(m.forward_s):.0f} img/s"),
        row("(b) full dissection", lambda m: f"{m.rate(m.dissect_s):.0f} img/s"),
        row("(b)/(a), rate (target ≥ 80 %)", ratio),
        row("forward passes of (b) (1: activations kept)",
            lambda m: f"{m.result.summary.settings.passes}"),
        row(f"{BRODEN_IMAGES:,} images at (b)'s rate (target < 60 s, ResNet-50)", broden),
    ]  # fmt: skip
    split = [
        row("(b) in all", lambda m: f"{m.dissect_s:.2f} s"),
        row("model load + fingerprint", timing("model_load_s")),
        row("pass 1: images + forward + thresholds", timing("pass1_s")),
        row("pass 2: labels + tally", timing("pass2_s")),
        row("scoring + files", timing("scoring_s")),
        row("(a) for comparison: images + forward", lambda m: f"{m.forward_s:.2f} s"),
        row("labels alone for comparison", lambda m: f"{m.labels_s:.2f} s"),
        row("what bound (b)", lambda m: bound(m) if m.forward_s / m.dissect_s < TARGET_RATIO
            else "(b) within 80 % of (a)"),
    ]  # fmt: skip
    found = "; ".join(f"{m.case.title}: {m.result.headline().split(': ', 1)[-1]}" for m in ms)
    return (
        md_table(headers, main)
        + "\n\nWhere (b)'s time went (the dissection's recorded timings):\n\n"
        + md_table(headers, split)
        + f"\n\nResults (random weights, random labels: only proof that it ran): {found}."
    )


def environment(dev: torch.device) -> str:
    cuda = torch.version.cuda or "none"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if dev.type == "cuda":
        memory = torch.cuda.get_device_properties(dev).total_memory / 2**30
        name = f"{torch.cuda.get_device_name(dev)} ({memory:.0f} GiB)"
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    return f"torch {torch.__version__}, CUDA {cuda}, cuDNN {cudnn}; device {dev}: {name}"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=10_000, help="images in the synthetic store")
    ap.add_argument("--work", type=Path, default=None, help="store folder (default: temporary)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 128 (CUDA), 32")
    ap.add_argument("--workers", type=int, default=min(8, max(usable_cores() - 2, 1)))
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="mixed precision (default: on with CUDA)")  # fmt: skip
    ap.add_argument("--input-size", type=int, default=None, help="model input (default 224)")
    ap.add_argument("--memory-budget", default="32GiB", help="for the kept activations")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (64 images)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--build-only", action="store_true",
                    help="only build the stores in --work (for a later run to reuse)")  # fmt: skip
    ap.add_argument("--results", type=Path, default=RESULTS, help="the results file to write")
    args = ap.parse_args()
    if args.build_only and args.work is None:
        ap.error("--build-only needs --work (the folder a later run reuses)")
    args.dev = resolve_device(args.device)
    cuda = args.dev.type == "cuda"
    if args.quick:
        args.images = min(args.images, 64)
        args.batch_size = args.batch_size or 8
        args.input_size = args.input_size or 64
        args.workers = min(args.workers, 2)
    args.batch_size = args.batch_size or (128 if cuda else 32)
    args.amp = cuda if args.amp is None else args.amp
    args.size = args.input_size  # None: the store's 224 px
    return args


def main() -> None:
    args = parse_args()
    run_info = Run()
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    work = args.work or tmp
    work.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    shape = QUICK_SHAPE if args.quick else FULL_SHAPE
    try:
        store, built = get_store(work / f"gpu-synthetic{suffix}.zarr", args.images, shape)
        small = store
        if len(store) > IDENTITY_IMAGES and (args.dev.type == "cuda" or args.build_only):
            small, _ = get_store(work / f"gpu-identity{suffix}.zarr", IDENTITY_IMAGES, shape)
        if args.build_only:
            return
        size = args.size or store.image_size
        setup = (
            f"{environment(args.dev)}. Synthetic store of {len(store):,} images "
            f"{store.image_size} px, labels {store.label_size} px, {len(store.concepts):,} "
            f"concepts ({built}); model input {size} px, batch {args.batch_size}, "
            f"{args.workers} data loader workers, amp {'on' if args.amp else 'off'}, "
            f"memory budget {args.memory_budget}; random weights; one timed run of each "
            "after a warm-up of two batches."
        )
        print(setup, flush=True)
        ms = [measure(case, store, args, tmp) for case in CASES]
        part1 = tables(ms)
        ident = identity(small, args, tmp)
        heads = ["", "thresholds CPU vs CUDA", "counts equal, CPU thresholds",
                 "IoU equal, CPU thresholds"]  # fmt: skip
        part2 = "CPU against CUDA (the dissection of one layer on each, TF32 off):\n\n"
        part2 += md_table(heads, [ident])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(part1 + "\n\n" + part2, flush=True)
    if not args.no_write:
        body = "\n\n".join(["## GPU (`bench/gpu.py`)", run_info.preamble(), setup, part1, part2])
        print("wrote", write_section("gpu", body, args.results))


if __name__ == "__main__":
    main()
