"""``broden build``: sources → one Broden store, in four resumable phases.

1. **prepare** (parallel, per task of ``task_size`` samples): each sample is read once
   at source resolution; its label statistics per key (source, category, local id) are
   counted there (image frequency, pixel coverage; colors from the full-resolution
   image), the image is resized to S×S and every label map sampled to L×L (still in
   local ids). A task's output goes to the staging folder ``STORE.build/tasks/`` and
   its record (``NNNNN.json``, written last) marks it done.
2. **unify** (main process): the statistics of all tasks are merged into the numbered
   concept table by Broden's rules (:mod:`broden.vocabulary`).
3. **write** (parallel, per shard): each store shard is assembled from the staged
   tasks, local ids mapped to concept ids, and written whole by one process (writers
   sharing a Zarr shard lose data). ``STORE.build/written/NNNNN.json`` marks it done.
4. **finalize**: concept table, provenance, build report and shard digests go into the
   attributes, the store is marked complete (last), the staging folder removed.

Killed at any point, the same command continues from the last finished task or shard
and produces the same store as an uninterrupted run; the plan's fingerprint (config
and the sources' sample lists) guards against resuming with different inputs. The
result does not depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import zarr
from tqdm import tqdm
from zarr.codecs import ZstdCodec

from broden.adapters import (
    Adapter,
    Prebuilt,
    SampleError,
    SourceError,
    SourceSample,
)
from broden.adapters.categories import Kind, category_sort_key
from broden.adapters.colors import color_counts, color_labels, color_vocabulary
from broden.config import BuildConfig, make_adapters
from broden.errors import BuildError, StoreError
from broden.imaging import label_grid, resize_image, sample_labels
from broden.runners import Runner, make_runner
from broden.schema import (
    FORMAT_VERSION,
    BuildReport,
    CategorySpec,
    Concept,
    SkippedSample,
    SourceInfo,
    StoreAttrs,
)
from broden.store import (
    CONCEPTS_ATTR,
    Block,
    StoreWriter,
    array_name,
    merge_digests,
    read_attrs,
)
from broden.store.layout import n_shards
from broden.vocabulary import Key, KeyStats, Synonyms, Unified, key_names, unify

COLOR = "color"
#: Coverage is accumulated in integer units of 2**-40 image, so that its sums are exact and
#: do not depend on how samples are grouped into tasks (float addition is not associative).
COVERAGE_UNIT = 2**40


def coverage_units(pixels: int, area: int) -> int:
    """A fraction ``pixels / area`` of an image in integer coverage units (rounded down)."""
    return (int(pixels) * COVERAGE_UNIT) // int(area)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("broden")
    except PackageNotFoundError:
        return "0+unknown"


def split_of(source: str, source_id: str, splits: dict[str, float]) -> str:
    """Broden's split rule: md5 of ``"<source>/<file name>"`` as a fraction of 2**64,
    compared with the cumulative split fractions (train 0.7, val 0.3 by default)."""
    name = f"{source}/{PurePosixPath(source_id).name}"
    (number,) = struct.unpack(">Q", hashlib.md5(name.encode("utf-8")).digest()[:8])
    frac = number / 2.0**64
    cum = 0.0
    items = list(splits.items())
    for split, share in items[:-1]:
        cum += share
        if frac <= cum:
            return split
    return items[-1][0]


# -- the plan ------------------------------------------------------------------------------


@dataclass
class Source:
    """A configured source, as the workers see it."""

    name: str
    adapter: Adapter
    kinds: dict[str, Kind]  # category -> pixel/image (colors included when on)
    known: dict[str, np.ndarray]  # category -> bool lookup of valid local ids


@dataclass
class Plan:
    config: BuildConfig
    sources: list[Source]
    candidates: list[tuple[int, int]]  # (source index, sample index), in store order
    tasks: list[tuple[int, int]]  # [start, stop) into candidates
    fingerprint: str
    vocabularies: dict[str, dict[str, dict[int, list[str]]]]  # source -> cat -> id -> names
    prebuilt: Prebuilt | None = None  # a merged release whose numbering is kept (legacy)


def make_plan(config: BuildConfig, adapters: list[tuple[str, Adapter]] | None = None) -> Plan:
    """Check every source, read its vocabulary and list all samples (before any work)."""
    if adapters is None:
        adapters = make_adapters(config)
    prebuilt = _check_prebuilt(config, adapters)
    sources: list[Source] = []
    vocabs: dict[str, dict[str, dict[int, list[str]]]] = {}
    candidates: list[tuple[int, int]] = []
    kinds_seen: dict[str, tuple[str, str]] = {}
    id_hash = hashlib.sha256()
    for si, (name, adapter) in enumerate(adapters):
        vocab = adapter.vocabulary()
        kinds = {c: adapter.kind(c) for c in adapter.categories}
        if config.colors and prebuilt is None:
            vocab = {**vocab, COLOR: color_vocabulary()}
            kinds[COLOR] = "pixel"
        for cat, kind in kinds.items():
            prev = kinds_seen.setdefault(cat, (kind, name))
            if prev[0] != kind:
                raise SourceError(
                    f"category {cat!r} is per-{kind} in source {name!r} but per-{prev[0]} in "
                    f"source {prev[1]!r}; a category has one kind"
                )
        known = {}
        for cat, ids in vocab.items():
            top = max(ids, default=0)
            if top > 65535:
                raise SourceError(f"source {name!r}: {cat} label id {top} exceeds 65535")
            lut = np.zeros(top + 1, bool)
            lut[list(ids)] = True
            known[cat] = lut
        n = len(adapter)
        id_hash.update(name.encode())
        for i in range(n):
            id_hash.update(adapter.source_id(i).encode() + b"\0")
        sources.append(Source(name, adapter, kinds, known))
        vocabs[name] = vocab
        candidates.extend((si, i) for i in range(n))
    if not candidates:
        raise BuildError("the configured sources hold no samples")
    ts = config.task_size
    tasks = [(a, min(a + ts, len(candidates))) for a in range(0, len(candidates), ts)]
    doc = {"format": FORMAT_VERSION, "config": config.model_dump(mode="json")}
    fp = hashlib.sha256(json.dumps(doc, sort_keys=True).encode())
    fp.update(id_hash.digest())
    return Plan(config, sources, candidates, tasks, fp.hexdigest()[:20], vocabs, prebuilt)


def _check_prebuilt(config: BuildConfig, adapters: list[tuple[str, Adapter]]) -> Prebuilt | None:
    """A prebuilt release (legacy Broden) keeps its numbering: it must be the only source,
    at its own size, with the colors it already holds."""
    found = [(name, a, a.prebuilt()) for name, a in adapters]
    pre = [(name, a, p) for name, a, p in found if p is not None]
    if not pre:
        return None
    name, adapter, p = pre[0]
    assert p is not None
    if len(adapters) > 1:
        raise SourceError(
            f"source {name!r} ({adapter.name}) is an already merged release whose concept "
            "numbers are kept; it must be the only source of its config"
        )
    if config.image_size != p.image_size:
        raise SourceError(
            f"source {name!r} holds {p.image_size}×{p.image_size} images with "
            f"{p.label_size}×{p.label_size} labels; the config asks for image_size "
            f"{config.image_size}. Set image_size: {p.image_size} (a release is imported at "
            "its own size)"
        )
    if config.label_size != p.label_size:
        raise SourceError(
            f"source {name!r} has {p.label_size}×{p.label_size} labels, not image_size // 2 = "
            f"{config.label_size}"
        )
    if config.colors:
        raise SourceError(
            f"source {name!r} already holds its color labels; set colors: false in the config"
        )
    return p


# -- phase 1: prepare ----------------------------------------------------------------------


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


# Worker state: set once per process by _init_worker (or directly when in-process).
_STATE: dict[str, Any] = {}


def _init_worker(plan: Plan, staging: str, store: str) -> None:
    _STATE["plan"] = plan
    _STATE["staging"] = Path(staging)
    _STATE["store"] = store


def _task_paths(staging: Path, task: int) -> tuple[Path, Path]:
    return staging / "tasks" / f"{task:05d}.zarr", staging / "tasks" / f"{task:05d}.json"


def _atomic_write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def run_prepare_task(task: int) -> dict[str, Any]:
    """Prepare the samples of one task; write its arrays and record to the staging folder."""
    plan: Plan = _STATE["plan"]
    staging: Path = _STATE["staging"]
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

    arrays_path, record_path = _task_paths(staging, task)
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
    }
    _atomic_write_json(record_path, record)
    return record


# -- phase 3: write ------------------------------------------------------------------------


@dataclass
class Layout:
    """What the write phase needs from unify."""

    n: int
    shard: int
    categories: list[CategorySpec]
    rows: list[tuple[int, int]]  # store row -> (task, position among the task's ok samples)
    meta: list[dict[str, Any]]  # store row -> sample record (source, source_id, split, ...)
    luts: dict[tuple[str, str], np.ndarray]  # (source, category) -> local id -> concept id


def _array(group: zarr.Group, name: str) -> zarr.Array:
    arr = group[name]
    assert isinstance(arr, zarr.Array), name
    return arr


def run_write_task(shard: int, layout: Layout) -> dict[str, str]:
    """Assemble and write one store shard; record its digests."""
    start = shard * layout.shard
    stop = min(start + layout.shard, layout.n)
    digests = StoreWriter(_STATE["store"]).write_shard(shard, assemble_rows(layout, start, stop))
    _atomic_write_json(_STATE["staging"] / "written" / f"{shard:05d}.json", digests)
    return digests


def assemble_rows(layout: Layout, start: int, stop: int) -> Block:
    """Rows ``[start, stop)`` of ``layout`` from the staged tasks, in concept ids, with the
    layers of ``layout.categories`` (zeros where a row has fewer layers or none)."""
    plan: Plan = _STATE["plan"]
    staging: Path = _STATE["staging"]
    S, L = plan.config.image_size, plan.config.label_size
    n = stop - start
    cache: dict[int, zarr.Group] = {}

    def task_group(t: int) -> zarr.Group:
        if t not in cache:
            cache[t] = zarr.open_group(str(_task_paths(staging, t)[0]), mode="r")
        return cache[t]

    blk = Block(images=np.zeros((n, S, S, 3), np.uint8))
    for c in layout.categories:
        if c.kind == "pixel":
            blk.pixel[c.name] = np.zeros((n, c.layers, L, L), np.uint16)
        else:
            blk.image_labels[c.name] = np.zeros((n, c.layers), np.uint16)
    # read each staged task's arrays once, in bulk
    by_task: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for r in range(n):
        t, pos = layout.rows[start + r]
        by_task[t].append((r, pos))
    for t, items in by_task.items():
        g = task_group(t)
        rs = [r for r, _ in items]
        ps = [p for _, p in items]
        imgs = np.asarray(_array(g, "images")[:])
        blk.images[rs] = imgs[ps]
        for c in layout.categories:
            name = array_name(c)
            if c.kind != "pixel" or name not in g:
                continue
            local = np.asarray(_array(g, name)[:])[ps]
            for r, row_local in zip(rs, local, strict=True):
                lut = layout.luts.get((layout.meta[start + r]["source"], c.name))
                if lut is not None:
                    k = row_local.shape[0]
                    blk.pixel[c.name][r, :k] = lut[row_local]
    for r in range(n):
        m = layout.meta[start + r]
        for cat, ids in m["image_labels"].items():
            lut = layout.luts.get((m["source"], cat))
            if lut is None or cat not in blk.image_labels:
                continue  # every label of this category was dropped by the thresholds
            mapped = [int(lut[i]) for i in ids if lut[i]]
            blk.image_labels[cat][r, : len(mapped)] = mapped
        blk.source.append(m["source"])
        blk.source_id.append(m["source_id"])
        blk.split.append(m["split"])
    blk.orig_size = np.array([layout.meta[start + r]["orig_size"] for r in range(n)], np.int32)
    return blk


# -- the driver ----------------------------------------------------------------------------


@dataclass
class BuildSummary:
    store: Path
    images: int
    per_source: dict[str, int]
    skipped: list[SkippedSample]
    concepts: dict[str, int]  # primary category -> count
    dropped: int
    seconds: float
    reused_tasks: int = 0
    up_to_date: bool = False
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [
            f"store: {self.store}"
            + ("  (already complete: nothing to do)" if self.up_to_date else ""),
            f"images: {self.images}  ("
            + ", ".join(f"{s} {n}" for s, n in self.per_source.items())
            + ")",
            "concepts: "
            + ", ".join(f"{c} {n}" for c, n in self.concepts.items())
            + f"  (total {sum(self.concepts.values())})",
            f"dropped labels under the thresholds: {self.dropped}",
            f"skipped samples: {len(self.skipped)}",
        ]
        for s in self.skipped[:20]:
            lines.append(f"  - {s.source}:{s.source_id}: {s.reason}")
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more (see `broden info --json`)")
        if self.reused_tasks:
            lines.append(f"resumed: {self.reused_tasks} finished tasks reused")
        lines.append(f"time: {self.seconds:.1f} s")
        lines.extend(self.notes)
        return "\n".join(lines)


def staging_path(store: Path) -> Path:
    return store.with_name(store.name + ".build")


def _load_records(staging: Path, plan: Plan) -> dict[int, dict[str, Any]]:
    records = {}
    for t in range(len(plan.tasks)):
        arrays, path = _task_paths(staging, t)
        if path.exists() and arrays.exists():
            try:
                rec = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue  # rewritten below
            if rec.get("fingerprint") == plan.fingerprint:
                records[t] = rec
    return records


def prepare_all(
    plan: Plan, runner: Runner, records: dict[int, dict[str, Any]], strict: bool, progress: bool
) -> None:
    """Phase 1: run every task not in ``records`` (finished ones are reused); add theirs."""
    todo = [t for t in range(len(plan.tasks)) if t not in records]
    done_samples = sum(plan.tasks[t][1] - plan.tasks[t][0] for t in records)
    bar = tqdm(total=len(plan.candidates), initial=done_samples, desc="prepare", unit="img",
               disable=not progress)  # fmt: skip

    def task_done(rec: dict[str, Any], args: tuple[Any, ...]) -> None:
        records[rec["task"]] = rec
        bar.update(len(rec["samples"]))
        if strict:
            bad = [s for s in rec["samples"] if "reason" in s]
            if bad:
                raise BuildError(
                    f"--strict: sample {bad[0]['source']}:{bad[0]['source_id']} cannot be "
                    f"used: {bad[0]['reason']}"
                )

    runner.run(run_prepare_task, [(t,) for t in todo], task_done)
    bar.close()


@contextmanager
def running(
    plan: Plan, staging: Path, out: Path, workers: int, dask: str | None
) -> Iterator[Runner]:
    """The runner of ``--workers``/``--dask``, every worker set up for ``plan`` (a dead
    worker or an unusable cluster is a :class:`~broden.errors.RunnerError`, a
    ``BuildError``); closed at the end."""
    runner = make_runner(
        workers, dask, _init_worker, (plan, str(staging), str(out)), plan.fingerprint
    )
    try:
        yield runner
    finally:
        runner.close()
        _STATE.clear()


def write_shards(
    runner: Runner,
    task: Callable[..., Any],
    shards: list[int],
    layout: Any,
    staging: Path,
    progress: bool,
) -> None:
    """Run ``task(shard, layout)`` for every shard of ``shards`` not recorded as written."""
    written = {j for j in shards if (staging / "written" / f"{j:05d}.json").exists()}
    bar = tqdm(total=len(shards), initial=len(written), desc="write", unit="shard",
               disable=not progress)  # fmt: skip
    runner.run(task, [(j, layout) for j in shards if j not in written], lambda *_: bar.update(1))
    bar.close()


def fail_on_skips(report: BuildReport) -> None:
    """``--strict``: the first skipped sample fails the run."""
    if report.skipped:
        s = report.skipped[0]
        raise BuildError(f"--strict: sample {s.source}:{s.source_id} cannot be used: {s.reason}")


def start_staging(staging: Path, plan: Plan) -> dict[int, dict[str, Any]]:
    """Create (or reopen) the staging folder of ``plan``; the finished tasks' records.

    A staging folder left by a run with another fingerprint is an error, not reused."""
    (staging / "tasks").mkdir(parents=True, exist_ok=True)
    (staging / "written").mkdir(exist_ok=True)
    plan_file = staging / "plan.json"
    if plan_file.exists():
        old = json.loads(plan_file.read_text()).get("fingerprint")
        if old != plan.fingerprint:
            raise BuildError(
                f"{staging} holds an interrupted run of another config or other source files; "
                "pass --overwrite to start over (or delete that folder)"
            )
    else:
        _atomic_write_json(plan_file, {"fingerprint": plan.fingerprint, "tasks": len(plan.tasks)})
    return _load_records(staging, plan)


def build(
    config: BuildConfig,
    out: str | Path,
    workers: int = 1,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    adapters: list[tuple[str, Adapter]] | None = None,
    dask: str | None = None,
) -> BuildSummary:
    """Build (or resume building) a store at ``out`` from ``config``.

    ``workers`` processes prepare and write in parallel (1: in this process); ``dask``
    runs the same tasks on a Dask cluster instead (a scheduler address, or ``local:N``;
    see :mod:`broden.runners`). With ``strict``, the first unreadable sample fails the
    build instead of being skipped. ``overwrite`` deletes an existing store (and its
    staging) first.
    """
    t0 = time.perf_counter()
    out = Path(out)
    staging = staging_path(out)
    if overwrite:
        for p in (out, staging):
            if p.exists():
                shutil.rmtree(p)
    plan = make_plan(config, adapters)

    if out.exists():
        existing = _existing_attrs(out)
        if existing is not None and existing.adding is not None:
            raise BuildError(
                f"{out} is incomplete: a `broden add` to it was interrupted; run that same "
                "`broden add` command again to finish it (or pass --overwrite to rebuild)"
            )
        if existing is not None and existing.complete:
            if existing.build_fingerprint != plan.fingerprint:
                raise BuildError(
                    f"{out} already holds a complete store built from another config or other "
                    "source files; pass --overwrite to replace it, or choose another --out"
                )
            if staging.exists():
                shutil.rmtree(staging)
            summary = _summary_from_attrs(out, existing, time.perf_counter() - t0)
            summary.up_to_date = True
            return summary
        if existing is None and any(out.iterdir()):
            raise BuildError(f"{out} exists and is not a broden store; refusing to write into it")

    records = start_staging(staging, plan)
    reused = len(records)
    with running(plan, staging, out, workers, dask) as runner:
        prepare_all(plan, runner, records, strict, progress)
        unified, layout, report = _unify(plan, records)
        if strict:
            fail_on_skips(report)
        attrs = _store_attrs(plan, layout, report, complete=False)
        _prepare_store(out, attrs, unified, layout)
        shards = list(range(-(-layout.n // layout.shard)))
        write_shards(runner, run_write_task, shards, layout, staging, progress)

    report.seconds = time.perf_counter() - t0
    report.workers = workers
    attrs = _store_attrs(plan, layout, report, complete=True)
    _finalize(out, staging, attrs, layout)
    summary = _summary_from_attrs(out, attrs, report.seconds)
    summary.reused_tasks = reused
    return summary


def _existing_attrs(out: Path) -> StoreAttrs | None:
    try:
        return read_attrs(zarr.open_group(str(out), mode="r"), out)
    except (StoreError, FileNotFoundError, ValueError, KeyError):
        return None


def collect_stats(
    records: dict[int, dict[str, Any]],
) -> tuple[dict[Key, KeyStats], dict[tuple[Key, Key], int]]:
    """The label statistics (coverage in images) and part-of pixels of all task records."""
    stats: dict[Key, KeyStats] = defaultdict(KeyStats)
    part_of: dict[tuple[Key, Key], int] = defaultdict(int)
    for t in sorted(records):
        rec = records[t]
        for s, c, i, f, units in rec["stats"]:
            stats[(s, c, i)].add(KeyStats(f, units))
        for s, pc, pi, oc, oi, px in rec["part_of"]:
            part_of[((s, pc, pi), (s, oc, oi))] += px
    for st in stats.values():
        st.coverage = st.coverage / COVERAGE_UNIT
    return stats, part_of


def names_lookup(plan: Plan) -> Callable[[Key], list[str]]:
    """``names_of(key)`` for :func:`broden.vocabulary.unify`: the key's normalised names."""
    cfg = plan.config
    syn = Synonyms.broden() if cfg.synonyms else None
    cache: dict[Key, list[str]] = {}

    def names_of(key: Key) -> list[str]:
        if key not in cache:
            raw = plan.vocabularies[key[0]].get(key[1], {}).get(key[2], [])
            cache[key] = key_names(raw, key[1], cfg.suffixes, syn)
        return cache[key]

    return names_of


def _unify(plan: Plan, records: dict[int, dict[str, Any]]) -> tuple[Unified, Layout, BuildReport]:
    cfg = plan.config
    stats, part_of = collect_stats(records)
    if plan.prebuilt is not None:
        unified = _keep_numbering(plan.prebuilt, stats)
    else:
        names_of = names_lookup(plan)
        unified = unify(stats, names_of, cfg.min_frequency, cfg.min_coverage, part_of)
    layout, report = make_layout(plan, records, unified)
    return unified, layout, report


def make_layout(
    plan: Plan, records: dict[int, dict[str, Any]], unified: Unified
) -> tuple[Layout, BuildReport]:
    """Store rows, per-row metadata, label lookup tables and categories (with their layer
    counts) of the usable samples of ``records``, under the concept numbering ``unified``."""
    cfg = plan.config
    rows, meta, skipped = [], [], []
    layers: dict[str, int] = defaultdict(int)
    slots: dict[str, int] = defaultdict(int)
    kinds: dict[str, str] = {}
    for src in plan.sources:
        kinds.update(src.kinds)
    by_name = {src.name: src for src in plan.sources}
    luts: dict[tuple[str, str], np.ndarray] = {}
    for (s, c, i), cid in unified.assignment.items():
        if (s, c) not in luts:
            luts[(s, c)] = np.zeros(len(by_name[s].known[c]), np.uint16)
        luts[(s, c)][i] = cid
    for t in sorted(records):
        pos = 0
        for smp in records[t]["samples"]:
            if "reason" in smp:
                skipped.append(SkippedSample(source=smp["source"], source_id=smp["source_id"],
                                             reason=smp["reason"]))  # fmt: skip
                continue
            rows.append((t, pos))
            pos += 1
            smp = dict(smp)
            release_splits = plan.prebuilt.splits if plan.prebuilt is not None else None
            if release_splits is not None and smp["source_id"] in release_splits:
                smp["split"] = release_splits[smp["source_id"]]
            else:
                smp["split"] = split_of(smp["source"], smp["source_id"], cfg.splits)
            # whole-image labels that survive the thresholds decide the slot count
            for cat, ids in smp["image_labels"].items():
                lut = luts.get((smp["source"], cat))
                kept = [i for i in ids if lut is not None and lut[i]]
                slots[cat] = max(slots[cat], len(kept))
            for cat, k in smp["layers"].items():
                layers[cat] = max(layers[cat], k)
            meta.append(smp)
    n = len(rows)
    if n == 0:
        reasons = "; ".join(f"{s.source}:{s.source_id}: {s.reason}" for s in skipped[:3])
        raise BuildError(f"no usable samples: all {len(skipped)} were skipped ({reasons} ...)")
    categories = []
    for cat in sorted(set(layers) | set(slots), key=category_sort_key):
        if kinds[cat] == "pixel" and layers.get(cat):
            categories.append(CategorySpec(name=cat, kind="pixel", layers=layers[cat]))
        elif kinds[cat] == "image" and slots.get(cat):
            categories.append(CategorySpec(name=cat, kind="image", layers=slots[cat]))
    shard = min(cfg.shard_size, n)
    report = BuildReport(skipped=skipped, dropped=unified.dropped)
    return Layout(n, shard, categories, rows, meta, luts), report


def _keep_numbering(prebuilt: Prebuilt, stats: dict[Key, KeyStats]) -> Unified:
    """A prebuilt release's own concept table: every label id is its concept number."""
    try:
        concepts = [Concept.model_validate(c) for c in prebuilt.concepts]
    except ValueError as e:
        raise BuildError(f"the release's concept table is malformed: {e}") from None
    ids = [c.id for c in concepts]
    if ids != list(range(1, len(ids) + 1)):
        raise BuildError("the release's concept numbers are not 1..C without gaps")
    assignment = {key: (key[2] if key[2] <= len(ids) else 0) for key in stats}
    return Unified(concepts, assignment, {k: concepts[k[2] - 1].name for k in stats if k[2]})


def source_infos(plan: Plan, layout: Layout, report: BuildReport) -> list[SourceInfo]:
    """Provenance of the plan's sources, with the images and skips of ``layout``/``report``."""
    per_source: dict[str, int] = defaultdict(int)
    for m in layout.meta:
        per_source[m["source"]] += 1
    skipped: dict[str, int] = defaultdict(int)
    for s in report.skipped:
        skipped[s.source] += 1
    sources = []
    for src in plan.sources:
        info = src.adapter.describe()
        sources.append(
            SourceInfo(
                name=src.name,
                adapter=src.adapter.name,
                categories=list(src.kinds),
                images=per_source[src.name],
                skipped=skipped[src.name],
                title=info.get("title"),
                version=info.get("version"),
                license=info.get("license"),
                citation=info.get("citation"),
                manifest_sha256=info.get("manifest_sha256"),
                options=src.adapter.options.model_dump(mode="json"),
            )
        )
    return sources


def _store_attrs(plan: Plan, layout: Layout, report: BuildReport, complete: bool) -> StoreAttrs:
    return StoreAttrs(
        format_version=FORMAT_VERSION,
        complete=complete,
        images=layout.n,
        image_size=plan.config.image_size,
        label_size=plan.config.label_size,
        shard_size=layout.shard,
        categories=layout.categories,
        sources=source_infos(plan, layout, report),
        build_config=plan.config.model_dump(mode="json"),
        build_fingerprint=plan.fingerprint,
        package_version=package_version(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        build_report=report,
    )


def _prepare_store(out: Path, attrs: StoreAttrs, unified: Unified, layout: Layout) -> None:
    existing = _existing_attrs(out) if out.exists() else None
    if existing is not None and existing.build_fingerprint != attrs.build_fingerprint:
        shutil.rmtree(out)
        existing = None
    StoreWriter.begin(out, attrs, unified.concepts)


def _finalize(out: Path, staging: Path, attrs: StoreAttrs, layout: Layout) -> None:
    written = [
        json.loads((staging / "written" / f"{j:05d}.json").read_text())
        for j in range(n_shards(layout.n, layout.shard))
    ]
    StoreWriter(out).finish(attrs, merge_digests(written))
    shutil.rmtree(staging, ignore_errors=True)


def _summary_from_attrs(out: Path, attrs: StoreAttrs, seconds: float) -> BuildSummary:
    g = zarr.open_group(str(out), mode="r")
    concepts: dict[str, int] = defaultdict(int)
    table: list[dict[str, Any]] = list(g.attrs.get(CONCEPTS_ATTR) or [])  # type: ignore[arg-type]
    for c in table:
        concepts[c["category"]] += 1
    ordered = dict(sorted(concepts.items(), key=lambda kv: category_sort_key(kv[0])))
    return BuildSummary(
        store=out,
        images=attrs.images,
        per_source={s.name: s.images for s in attrs.sources},
        skipped=attrs.build_report.skipped,
        concepts=ordered,
        dropped=len(attrs.build_report.dropped),
        seconds=seconds,
    )
