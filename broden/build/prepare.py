"""Phase 1 of a build, **prepare**: each sample read once at source resolution and reduced
to what the store needs (statistics at source resolution, the image at S×S, label maps at
L×L in local ids); a task's samples staged together, its record written last."""

from __future__ import annotations

import shutil
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from broden.adapters import SampleError, SourceSample
from broden.adapters.colors import color_counts, color_labels
from broden.adapters.files import reading
from broden.build.plan import COLOR, Source
from broden.build.staging import atomic_write_json, task_files, task_paths, worker
from broden.imaging import label_grid, resize_image, sample_labels
from broden.store import array_name

#: Coverage is accumulated in integer units of 2**-40 image, so that its sums are exact and
#: do not depend on how samples are grouped into tasks (float addition is not associative).
COVERAGE_UNIT = 2**40


def coverage_units(pixels: int, area: int) -> int:
    """A fraction ``pixels / area`` of an image in integer coverage units (rounded down)."""
    return (int(pixels) * COVERAGE_UNIT) // int(area)


@dataclass
class Prepared:
    """One sample after reading: statistics at source resolution, arrays at store size."""

    source: str
    source_id: str
    orig_size: tuple[int, int]
    image: np.ndarray  # (S, S, 3)
    pixel: dict[str, np.ndarray]  # cat -> (K, L, L) local ids
    image_labels: dict[str, list[int]]
    stats: dict[tuple[str, int], int]  # (cat, local id) -> coverage units in this image
    part_of: dict[tuple[str, int, str, int], int]


def prepare_sample(
    src: Source, index: int, image_size: int, label_size: int, prebuilt: bool = False
) -> Prepared:
    """Read one sample and reduce it to what the store needs; raise SampleError if bad.

    ``prebuilt``: the sample is already at store size (image S×S, pixel maps L×L): it is
    checked and taken as is.
    """
    adapter = src.adapter
    sample = adapter.load(index)
    image = sample.image
    if prebuilt:
        _check_store_size(sample, image_size, label_size)
        H, W = label_size, label_size  # statistics at the release's label resolution
        rows = cols = np.arange(label_size)
    else:
        sample.validate()
        H, W = image.shape[:2]
        rows, cols = label_grid((H, W), label_size)
    area = H * W
    stats: dict[tuple[str, int], int] = {}
    pixel: dict[str, np.ndarray] = {}
    for cat, arr in sample.pixel.items():
        if cat not in src.kinds or (cat == COLOR and not prebuilt) or arr.shape[0] == 0:
            continue
        if src.kinds[cat] != "pixel":
            raise SampleError(f"{sample.source_id}: {cat} is a whole-image category")
        if arr.dtype.kind == "i" and arr.min(initial=0) < 0:
            raise SampleError(f"{sample.source_id}: negative {cat} label ids")
        counts = np.bincount(arr.ravel())
        ids = np.flatnonzero(counts[1:]) + 1
        known = src.known.get(cat, np.zeros(1, bool))
        unknown = [int(i) for i in ids if i >= len(known) or not known[i]]
        if unknown:
            raise SampleError(
                f"{sample.source_id}: {cat} label ids {unknown[:5]} are not in the source's "
                "vocabulary"
            )
        for i in ids:
            stats[(cat, int(i))] = coverage_units(counts[i], area)
        pixel[cat] = sample_labels(arr, rows, cols).astype(np.uint16)
    image_labels: dict[str, list[int]] = {}
    for cat, ids_list in sample.image_labels.items():
        if cat not in src.kinds:
            continue
        if src.kinds[cat] != "image":
            raise SampleError(f"{sample.source_id}: {cat} is a per-pixel category")
        wanted = list(dict.fromkeys(int(i) for i in ids_list if int(i) != 0))
        known = src.known.get(cat, np.zeros(1, bool))
        unknown = [i for i in wanted if i < 0 or i >= len(known) or not known[i]]
        if unknown:
            raise SampleError(
                f"{sample.source_id}: {cat} label ids {unknown[:5]} are not in the source's "
                "vocabulary"
            )
        if wanted:
            image_labels[cat] = wanted
            for label in wanted:
                stats[(cat, label)] = COVERAGE_UNIT
    if COLOR in src.kinds and not prebuilt:
        counts = color_counts(image)
        for i in np.flatnonzero(counts):
            stats[(COLOR, int(i))] = coverage_units(counts[i], area)
        pixel[COLOR] = color_labels(image, rows, cols)[None]
    part_of: dict[tuple[str, int, str, int], int] = defaultdict(int)
    for e in sample.part_of:
        if e.part_category in src.kinds and e.parent_category in src.kinds:
            part_of[(e.part_category, e.part, e.parent_category, e.parent)] += e.pixels
    return Prepared(
        source=src.name,
        source_id=sample.source_id,
        orig_size=image.shape[:2],
        image=image if prebuilt else resize_image(image, image_size),
        pixel=pixel,
        image_labels=image_labels,
        stats=stats,
        part_of=dict(part_of),
    )


def _check_store_size(sample: SourceSample, image_size: int, label_size: int) -> None:
    im = sample.image
    if im.shape != (image_size, image_size, 3) or im.dtype != np.uint8:
        raise SampleError(
            f"{sample.source_id}: image is {im.shape} {im.dtype}, expected "
            f"({image_size}, {image_size}, 3) uint8 like the rest of the release"
        )
    for cat, arr in sample.pixel.items():
        if arr.ndim != 3 or arr.shape[1:] != (label_size, label_size):
            raise SampleError(
                f"{sample.source_id}: {cat} labels are {arr.shape[-2:]}, expected "
                f"{label_size}×{label_size} like the rest of the release"
            )


def run_prepare_task(task: int) -> dict[str, Any]:
    """Prepare the samples of one task; write its arrays and record to the staging folder."""
    plan, staging = worker().plan, worker().staging
    cfg = plan.config
    S, L = cfg.image_size, cfg.label_size
    start, stop = plan.tasks[task]
    samples: list[dict[str, Any]] = []
    prepared: list[Prepared] = []
    stats: dict[tuple[str, str, int], list[int]] = {}
    part_of: dict[tuple[str, str, int, str, int], int] = defaultdict(int)
    for si, index in plan.candidates[start:stop]:
        src = plan.sources[si]
        try:
            with reading(src.limits):
                p = prepare_sample(src, index, S, L, prebuilt=plan.prebuilt is not None)
        except Exception as e:  # listed as a skip; --strict turns it into a failure
            reason = str(e) if isinstance(e, SampleError) else f"{type(e).__name__}: {e}"
            samples.append(
                {"source": src.name, "source_id": src.adapter.source_id(index), "reason": reason}
            )
            continue
        samples.append(
            {
                "source": p.source,
                "source_id": p.source_id,
                "orig_size": list(p.orig_size),
                "image_labels": p.image_labels,
                "layers": {c: int(a.shape[0]) for c, a in p.pixel.items()},
            }
        )
        prepared.append(p)
        for (cat, i), units in p.stats.items():
            acc = stats.setdefault((p.source, cat, i), [0, 0])
            acc[0] += 1
            acc[1] += units
        for (pc, pi, oc, oi), px in p.part_of.items():
            part_of[(p.source, pc, pi, oc, oi)] += px

    arrays_path, record_path = task_paths(staging, task)
    if arrays_path.exists():
        shutil.rmtree(arrays_path)
    g = zarr.open_group(str(arrays_path), mode="w")
    n = len(prepared)
    codec = ZstdCodec(level=1)
    if n:
        g.create_array("images", data=np.stack([p.image for p in prepared]), compressors=codec)
        for cat in sorted({c for p in prepared for c in p.pixel}):
            K = max(p.pixel[cat].shape[0] for p in prepared if cat in p.pixel)
            arr = np.zeros((n, K, L, L), np.uint16)
            for r, p in enumerate(prepared):
                if cat in p.pixel:
                    arr[r, : p.pixel[cat].shape[0]] = p.pixel[cat]
            g.create_array(array_name(cat, "pixel"), data=arr, compressors=codec)
    record = {
        "task": task,
        "fingerprint": plan.fingerprint,
        "samples": samples,
        "stats": [[s, c, i, v[0], v[1]] for (s, c, i), v in sorted(stats.items())],
        "part_of": [[*k, v] for k, v in sorted(part_of.items())],
        "files": task_files(arrays_path),  # checked before the task is reused
    }
    atomic_write_json(record_path, record)
    return record
