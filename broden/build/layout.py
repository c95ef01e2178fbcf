"""Phase 2 of a build, **unify**, and what the write phase needs from it: the concept
table from every task's statistics (:mod:`broden.vocabulary`), then the :class:`Layout`
(store rows, metadata, categories with their layers, local → concept id tables), and
:func:`assemble_rows`, one shard's rows from the staged tasks in concept ids."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from broden.adapters import Prebuilt
from broden.adapters.categories import category_sort_key
from broden.build.plan import Plan, split_of
from broden.build.prepare import COVERAGE_UNIT
from broden.build.staging import task_paths, worker
from broden.errors import BuildError
from broden.schema import BuildReport, CategorySpec, Concept, SkippedSample
from broden.store import Block, array_name
from broden.vocabulary import Key, KeyStats, Synonyms, Unified, key_names, unify


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


def unify_plan(
    plan: Plan, records: dict[int, dict[str, Any]]
) -> tuple[Unified, Layout, BuildReport]:
    """The concept table of a build's statistics (Broden's rules, or a prebuilt release's
    own numbering), the layout of its store and its report."""
    cfg = plan.config
    stats, part_of = collect_stats(records)
    if plan.prebuilt is not None:
        unified = keep_numbering(plan.prebuilt, stats)
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


def keep_numbering(prebuilt: Prebuilt, stats: dict[Key, KeyStats]) -> Unified:
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


def assemble_rows(layout: Layout, start: int, stop: int) -> Block:
    """Rows ``[start, stop)`` of ``layout`` from the staged tasks, in concept ids, with the
    layers of ``layout.categories`` (zeros where a row has fewer layers or none)."""
    plan: Plan = worker().plan
    staging: Path = worker().staging
    S, L = plan.config.image_size, plan.config.label_size
    n = stop - start
    cache: dict[int, zarr.Group] = {}

    def task_group(t: int) -> zarr.Group:
        if t not in cache:
            cache[t] = zarr.open_group(str(task_paths(staging, t)[0]), mode="r")
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
