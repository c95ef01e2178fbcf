"""``broden add``: append sources to a complete store; what it holds never changes.

The new sources go through the build's own **prepare** tasks (:mod:`broden.build`),
then their labels are merged into the store's concept table by
:func:`broden.vocabulary.unify_into`: existing ids, names, primary categories and pixels
stay as they are; a new label whose name (after the synonym tables) is an existing
concept's name or synonym joins that concept; other names pass the thresholds of the
add's config on the new images and are appended with ids C+1, C+2, ...

The new images are appended as rows ``N, N+1, ...``. Only shards at or after row N are
written, except where an array must grow: a category whose new labels need more layers
(K) than the store has is rewritten whole, old rows copied with the extra layers empty;
a category new to the store is created, all-zero (nothing is written) for the old rows.
Old rows therefore read back byte-identical.

Resumable like a build. Before the store is touched, the staging folder ``STORE.add/``
keeps the store's metadata (``old.json``) and a copy of the rows of its last, partly
filled shard (``tail.zarr``, rewritten with the first new rows); the store is then marked
incomplete with the add's fingerprint in ``adding``. One add (or build) at a time writes a
store (its lock, :mod:`broden.store.lock`). Killed at any point, the same
command finishes the job; any other use of the store says it is incomplete. Each
finished add is recorded in the store's ``additions``, and running it again is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from broden.adapters import Adapter
from broden.adapters.categories import category_sort_key
from broden.build.layout import Layout, assemble_rows, collect_stats, make_layout, names_lookup
from broden.build.phases import fail_on_skips, forget_unwritten, prepare_all, running, write_shards
from broden.build.plan import Plan, make_plan
from broden.build.staging import atomic_write_json, start_staging, worker, written_path
from broden.build.summary import BuildSummary, package_version, source_infos, summary_from_attrs
from broden.config import BuildConfig, make_adapters
from broden.errors import BuildError
from broden.schema import (
    Addition,
    BuildReport,
    CategorySpec,
    Concept,
    StoreAttrs,
)
from broden.store import (
    CONCEPTS_ATTR,
    DIGESTS_ATTR,
    Block,
    StoreWriter,
    array_name,
    array_names,
    open_group,
    read_attrs,
    shard_digest,
)
from broden.store.layout import n_shards
from broden.store.lock import store_lock
from broden.vocabulary import unify_into

#: build settings an add takes from the store (changing them would change old rows' meaning)
FIXED_SETTINGS = ("image_size", "colors", "suffixes", "splits", "synonyms", "shard_size")


def staging_path(store: Path) -> Path:
    return store.with_name(store.name + ".add")


@dataclass
class AddLayout:
    """What every write task of an add needs."""

    n_old: int
    n_total: int
    shard: int
    categories: list[CategorySpec]  # the store's categories after the add
    old_categories: dict[str, CategorySpec]
    migrated: list[str]  # arrays rewritten whole (more layers); old copies in staging
    new: Layout  # the appended rows (row 0 = store row n_old)


def effective_config(config: BuildConfig, old: StoreAttrs, path: Path) -> BuildConfig:
    """The add's config with the store's fixed settings; a conflicting explicit setting fails."""
    store_cfg = old.build_config
    update: dict[str, Any] = {}
    for key in FIXED_SETTINGS:
        if key not in store_cfg:
            continue
        if key in config.model_fields_set and getattr(config, key) != store_cfg[key]:
            raise BuildError(
                f"the config sets {key}: {getattr(config, key)!r} but {path} was built with "
                f"{store_cfg[key]!r}; an add keeps the store's {key} (leave it out of the config)"
            )
        update[key] = store_cfg[key]
    return config.model_validate({**config.model_dump(), **update})


def _fingerprint(old: StoreAttrs, plan_fp: str) -> str:
    doc = [old.build_fingerprint, [a.fingerprint for a in old.additions], old.images, plan_fp]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:20]


def _read_store(path: Path) -> tuple[zarr.Group, StoreAttrs]:
    group = open_group(path)
    return group, read_attrs(group, path)


def add(
    store: str | Path,
    config: BuildConfig,
    workers: int = 1,
    strict: bool = False,
    progress: bool = True,
    adapters: list[tuple[str, Adapter]] | None = None,
    dask: str | None = None,
    backup: bool = False,
) -> BuildSummary:
    """Add the sources of ``config`` to the complete store at ``store`` (see the module doc).

    ``workers``, ``dask``, ``strict`` and ``progress`` work as in :func:`broden.build.build`.
    The config's ``min_frequency``/``min_coverage`` apply to the new labels; the store's
    image size, colors, suffixes, splits, synonyms and shard size are kept. ``backup``:
    copy the store to ``STORE.orig`` first (:func:`backup_path`; what ``broden concepts
    --diff STORE.orig STORE`` compares with).

    The add holds the store's write lock (:func:`~broden.store.lock.store_lock`): a second
    writer fails at once, naming this process. A store that cannot be written (read-only)
    is refused before anything changes.
    """
    out = Path(store)
    open_group(out)  # no such store / not a store: said before anything is created
    with store_lock(out):
        _check_writable(out)
        return _add(out, config, workers, strict, progress, adapters, dask, backup)


def _check_writable(out: Path) -> None:
    """Every folder of the store must be writable (files are replaced by renames in them)."""
    for folder, _, _ in os.walk(out):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BuildError(
                f"{out} is read-only ({folder} cannot be written); an add writes into the "
                "store: make it writable (chmod -R u+w) or add to a copy of it"
            )


def _add(
    out: Path,
    config: BuildConfig,
    workers: int,
    strict: bool,
    progress: bool,
    adapters: list[tuple[str, Adapter]] | None,
    dask: str | None,
    backup: bool,
) -> BuildSummary:
    t0 = time.perf_counter()
    staging = staging_path(out)
    group, attrs = _read_store(out)
    old_file = staging / "old.json"
    if not attrs.complete:
        if attrs.adding is None:
            raise BuildError(
                f"{out} is incomplete (its build was interrupted): run that `broden build` "
                "again to finish it before adding sources"
            )
        if not old_file.exists():
            raise BuildError(
                f"{out} is in the middle of an add whose staging folder {old_file.parent} is "
                "gone; the store cannot be recovered, rebuild it"
            )
    if old_file.exists():
        saved = json.loads(old_file.read_text())
        old = StoreAttrs.model_validate(saved["attrs"])
        old_concepts = [Concept.model_validate(c) for c in saved["concepts"]]
        old_digests: dict[str, list[str]] = saved["digests"]
    else:
        old = attrs
        old_concepts = [Concept.model_validate(c) for c in group.attrs.get(CONCEPTS_ATTR) or []]  # type: ignore[union-attr]
        old_digests = {}

    cfg = effective_config(config, old, out)
    if adapters is None:
        adapters = make_adapters(cfg)
    plan = make_plan(cfg, adapters)
    config_fp = plan.fingerprint
    if attrs.complete and config_fp in {a.config_fingerprint for a in attrs.additions}:
        shutil.rmtree(staging, ignore_errors=True)
        summary = summary_from_attrs(out, attrs, time.perf_counter() - t0)
        summary.up_to_date = True
        return summary
    taken = {s.name for s in old.sources}
    clash = [name for name, _ in adapters if name in taken]
    if clash:
        raise BuildError(
            f"{out} already has a source named {clash[0]!r}; give the new source another "
            "`name:` in the config"
        )
    if any(a.prebuilt() is not None for _, a in adapters):
        raise BuildError(
            "an already merged release (broden_legacy) cannot be added to a store: import it "
            "with `broden build` into a store of its own"
        )
    plan.fingerprint = _fingerprint(old, config_fp)
    if attrs.adding is not None and attrs.adding != plan.fingerprint:
        raise BuildError(
            f"{out} is in the middle of another `broden add` (another config or other source "
            "files); run that command again to finish it first"
        )

    if backup and attrs.complete:  # before anything changes (a resumed add has its copy)
        _backup(out)
    records = start_staging(staging, plan)
    if not old_file.exists():
        old_digests = {
            name: list(_array(group, name).attrs.get(DIGESTS_ATTR) or [])  # type: ignore[arg-type]
            for name in array_names(old.categories)
        }
        doc = {
            "attrs": old.model_dump(mode="json"),
            "concepts": [c.model_dump(mode="json") for c in old_concepts],
            "digests": old_digests,
        }
        atomic_write_json(old_file, doc)
    reused = len(records)

    with running(plan, staging, out, workers, dask) as runner:
        prepare_all(plan, runner, records, strict, progress)
        stats, part_of = collect_stats(records)
        unified = unify_into(
            old_concepts, stats, names_lookup(plan), cfg.min_frequency, cfg.min_coverage,
            part_of,
        )  # fmt: skip
        new_layout, report = make_layout(plan, records, unified)
        if strict:
            fail_on_skips(report)
        job = _plan_layout(old, new_layout)
        _migrate(out, staging, old, job, plan.fingerprint)
        # shards of old rows only are rewritten when an array gained layers
        first = 0 if job.migrated else job.n_old // job.shard
        shards = list(range(first, -(-job.n_total // job.shard)))
        forget_unwritten(out, staging, shards)
        write_shards(runner, run_add_write_task, shards, job, staging, progress)

    seconds = time.perf_counter() - t0
    extended = sum(1 for c in unified.concepts[: len(old_concepts)] if c != old_concepts[c.id - 1])
    addition = Addition(
        fingerprint=plan.fingerprint,
        config_fingerprint=config_fp,
        sources=[s.name for s in plan.sources],
        images=job.n_total - job.n_old,
        first_image=job.n_old,
        concepts_added=len(unified.concepts) - len(old_concepts),
        concepts_extended=extended,
        skipped=len(report.skipped),
        config=config.model_dump(mode="json"),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    new_attrs = _final_attrs(old, plan, job, report, addition)
    _finalize(out, staging, new_attrs, unified.concepts, job, old_digests)
    summary = summary_from_attrs(out, new_attrs, seconds)
    summary.reused_tasks = reused
    summary.notes.append(
        f"added: {addition.images} images from {', '.join(addition.sources)} as rows "
        f"{job.n_old}-{job.n_total - 1}; {addition.concepts_added} new concepts (ids "
        f"{len(old_concepts) + 1}-{len(unified.concepts)}), {extended} existing concepts "
        "gained labels"
    )
    return summary


def _array(group: zarr.Group, name: str) -> zarr.Array:
    arr = group[name]
    assert isinstance(arr, zarr.Array), name
    return arr


def _plan_layout(old: StoreAttrs, new: Layout) -> AddLayout:
    """The store's categories after the add, and which arrays must be rewritten."""
    by_name = {c.name: c for c in old.categories}
    merged = dict(by_name)
    migrated = []
    for c in new.categories:
        prev = by_name.get(c.name)
        if prev is None:
            merged[c.name] = c
        elif prev.kind != c.kind:
            raise BuildError(
                f"category {c.name!r} is per-{c.kind} in the new sources but per-{prev.kind} in "
                "the store; a category has one kind"
            )
        elif c.layers > prev.layers:
            merged[c.name] = c
            migrated.append(array_name(c))
    categories = sorted(merged.values(), key=lambda c: category_sort_key(c.name))
    layout = Layout(new.n, new.shard, categories, new.rows, new.meta, new.luts)
    return AddLayout(
        n_old=old.images,
        n_total=old.images + new.n,
        shard=old.shard_size,
        categories=categories,
        old_categories=by_name,
        migrated=sorted(migrated),
        new=layout,
    )


def _migrate(out: Path, staging: Path, old: StoreAttrs, job: AddLayout, fingerprint: str) -> None:
    """Make room in the store for the new rows (once; each step is safe to repeat)."""
    if (staging / "migrated.json").exists():
        return
    group = open_group(out)  # the live metadata; the writer below changes the store
    r0 = (job.n_old // job.shard) * job.shard
    tail = staging / "tail.zarr"
    if r0 < job.n_old and not (staging / "tail.json").exists():
        if tail.exists():
            shutil.rmtree(tail)
        t = zarr.open_group(str(tail), mode="w")
        for name in array_names(old.categories):
            data = np.asarray(_array(group, name)[r0 : job.n_old])
            t.create_array(name.replace("/", "__"), data=data)
        atomic_write_json(staging / "tail.json", {"rows": [r0, job.n_old]})
    # from here on the store is not the old one any more
    writer = StoreWriter(out)
    writer.mark_incomplete(adding=fingerprint)
    for name in job.migrated:  # kept in staging, copied back with more layers
        writer.detach(name, staging / "old_arrays" / name)
    writer.ensure_arrays(job.n_total, job.categories)  # old arrays grow, new ones appear
    atomic_write_json(staging / "migrated.json", {"arrays": job.migrated})


def _old_rows(job: AddLayout, start: int, stop: int, S: int, L: int) -> Block:
    """Store rows ``[start, stop)`` (all old) with the layers of the categories after the add."""
    staging: Path = worker().staging
    tail = zarr.open_group(str(staging / "tail.zarr"), mode="r")

    def read(name: str) -> np.ndarray:
        return np.asarray(_array(tail, name.replace("/", "__"))[:])[: stop - start]

    n = stop - start
    blk = Block(images=read("images"))
    for c in job.categories:
        old = job.old_categories.get(c.name)
        if c.kind == "pixel":
            arr = np.zeros((n, c.layers, L, L), np.uint16)
            if old is not None:
                arr[:, : old.layers] = read(array_name(old))
            blk.pixel[c.name] = arr
        else:
            lab = np.zeros((n, c.layers), np.uint16)
            if old is not None:
                lab[:, : old.layers] = read(array_name(old))
            blk.image_labels[c.name] = lab
    blk.source = [str(x) for x in read("meta/source")]
    blk.source_id = [str(x) for x in read("meta/source_id")]
    blk.split = [str(x) for x in read("meta/split")]
    blk.orig_size = read("meta/orig_size")
    return blk


def run_add_write_task(shard: int, job: AddLayout) -> dict[str, str]:
    """Write one shard of the extended store; record its digests.

    A shard of old rows only re-lays the arrays that gained layers; any other shard is
    written whole, its old rows from the staged copy of the store's last shard."""
    plan: Plan = worker().plan
    staging: Path = worker().staging
    writer = StoreWriter(worker().store)
    S, L = plan.config.image_size, plan.config.label_size
    start = shard * job.shard
    stop = min(start + job.shard, job.n_total)
    if stop <= job.n_old:
        relaid = {}
        for name in job.migrated:
            src = zarr.open_array(str(staging / "old_arrays" / name), mode="r")
            old = np.asarray(src[start:stop])
            arr = writer.array(name)
            data = np.zeros((stop - start, *arr.shape[1:]), arr.dtype)
            data[:, : old.shape[1]] = old
            relaid[name] = data
        digests = writer.write_arrays(shard, relaid)
    else:
        blk = assemble_rows(job.new, max(start, job.n_old) - job.n_old, stop - job.n_old)
        if start < job.n_old:
            blk = Block.concat([_old_rows(job, start, job.n_old, S, L), blk])
        digests = writer.write_shard(shard, blk)
    atomic_write_json(written_path(staging, shard), digests)
    return digests


def _final_attrs(
    old: StoreAttrs, plan: Plan, job: AddLayout, report: BuildReport, addition: Addition
) -> StoreAttrs:
    sources = [*old.sources, *source_infos(plan, job.new, report)]
    rep = old.build_report.model_copy(
        update={
            "skipped": [*old.build_report.skipped, *report.skipped],
            "dropped": [*old.build_report.dropped, *report.dropped],
        }
    )
    return old.model_copy(
        update={
            "complete": True,
            "adding": None,
            "images": job.n_total,
            "categories": job.categories,
            "sources": sources,
            "build_report": rep,
            "additions": [*old.additions, addition],
            "package_version": package_version(),
        }
    )


def _finalize(
    out: Path,
    staging: Path,
    attrs: StoreAttrs,
    concepts: list[Concept],
    job: AddLayout,
    old_digests: dict[str, list[str]],
) -> None:
    writer = StoreWriter(out)
    shards = n_shards(job.n_total, job.shard)
    written: dict[int, dict[str, str]] = {}
    for j in range(shards):
        path = written_path(staging, j)
        if path.exists():
            written[j] = json.loads(path.read_text())
    digests: dict[str, list[str]] = {}
    for name in array_names(job.categories):
        arr = writer.array(name)
        digests[name] = []
        for j in range(shards):
            if name in written.get(j, {}):
                digests[name].append(written[j][name])
            elif j < len(old_digests.get(name, [])):
                digests[name].append(old_digests[name][j])
            else:  # a category new to the store, all zero on the old rows
                rows = min(job.shard, job.n_total - j * job.shard)
                digests[name].append(shard_digest(np.zeros((rows, *arr.shape[1:]), arr.dtype)))
    writer.finish(attrs, digests, concepts)
    shutil.rmtree(staging, ignore_errors=True)


def backup_path(store: Path) -> Path:
    """Where ``broden add --backup`` copies a store before adding: ``STORE.orig``."""
    return store.with_name(store.name + ".orig")


def _backup(store: Path) -> Path:
    dest = backup_path(store)
    if dest.exists():
        raise BuildError(
            f"{dest} exists (the backup of an earlier add?); move it away, or add without --backup"
        )
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(store, tmp)
    os.replace(tmp, dest)  # whole or not at all
    return dest
