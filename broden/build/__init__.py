"""``broden build``: sources → one Broden store, in four resumable phases.

The package: :mod:`~broden.build.plan` (sources checked, samples listed, tasks),
:mod:`~broden.build.prepare` (phase 1), :mod:`~broden.build.layout` (phase 2 and the rows
of phase 3), :mod:`~broden.build.staging` (the staging folder, the workers' context),
:mod:`~broden.build.phases` (running the phases), :mod:`~broden.build.runners` (in this
process, a process pool or Dask), :mod:`~broden.build.summary` (attributes and summary);
:func:`build` here drives them.

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
(a task whose staged arrays are not whole, or a shard that does not read back with its
digest, is done again) and produces the same store as an uninterrupted run; the plan's
fingerprint (config and the sources' sample lists) guards against resuming with different
inputs. The result does not depend on the number of workers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from broden.adapters import Adapter
from broden.build.layout import Layout, unify_plan
from broden.build.phases import (
    fail_on_skips,
    forget_unwritten,
    prepare_all,
    run_write_task,
    running,
    write_shards,
)
from broden.build.plan import Plan, make_plan, split_of
from broden.build.prepare import prepare_sample
from broden.build.staging import staging_path, start_staging, written_path
from broden.build.summary import BuildSummary, store_attrs, summary_from_attrs
from broden.config import BuildConfig
from broden.errors import BuildError, StoreError
from broden.removal import STAGING, STORE, remove_ours
from broden.schema import StoreAttrs
from broden.store import StoreWriter, merge_digests, open_group, read_attrs
from broden.store.layout import n_shards
from broden.store.lock import store_lock
from broden.store.writer import digest_mismatches
from broden.vocabulary import Unified

__all__ = [
    "BuildError",
    "BuildSummary",
    "Plan",
    "build",
    "make_plan",
    "prepare_sample",
    "split_of",
    "staging_path",
]


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
    see :mod:`broden.build.runners`). With ``strict``, the first unreadable sample fails the
    build instead of being skipped. ``overwrite`` deletes an existing store (and its
    staging) first: only a folder that is a broden store (or empty; :mod:`broden.removal`).

    The build holds the store's write lock (:func:`~broden.store.lock.store_lock`) from
    start to end: a second writer of ``out`` fails at once. A complete store of the same
    plan is "up to date" only when no staging folder is left beside it and every shard
    reads back with its recorded digest; otherwise the build finishes (or redoes) it.
    """
    t0 = time.perf_counter()
    out = Path(out)
    staging = staging_path(Path(os.path.abspath(out)))
    with store_lock(out):
        if overwrite:
            keep = source_paths(config)
            for p, kind in ((out, STORE), (staging, STAGING)):
                remove_ours(p, kind, keep)
        plan = make_plan(config, adapters)
        notes: list[str] = []
        if out.exists():
            summary = _existing_store(out, staging, plan, notes)
            if summary is not None:
                summary.seconds = time.perf_counter() - t0
                return summary
        summary = _run(plan, out, staging, workers, dask, strict, progress, t0)
    summary.notes.extend(notes)
    return summary


def source_paths(config: BuildConfig) -> list[Path]:
    """The existing files and folders a config's sources read (``--overwrite`` keeps them)."""
    found = []
    for s in config.sources:
        for value in s.adapter_options().values():
            if isinstance(value, str) and os.path.isabs(value) and os.path.exists(value):
                found.append(Path(value))
    return found


def _existing_store(out: Path, staging: Path, plan: Plan, notes: list[str]) -> BuildSummary | None:
    """What is at ``out`` already: the summary of a complete store of ``plan`` that holds
    what it says (up to date), None when the build has work to do (resume, finish or
    redo); :class:`BuildError` when ``out`` is not this build's to write."""
    if not out.is_dir():
        raise BuildError(f"{out} exists and is not a folder; refusing to write a store there")
    existing = _existing_attrs(out)
    if existing is not None and existing.adding is not None:
        raise BuildError(
            f"{out} is incomplete: a `broden add` to it was interrupted; run that same "
            "`broden add` command again to finish it (or pass --overwrite to rebuild)"
        )
    if existing is None:
        if any(out.iterdir()):
            raise BuildError(f"{out} exists and is not a broden store; refusing to write into it")
        return None
    if not existing.complete:
        return None
    if existing.build_fingerprint != plan.fingerprint:
        raise BuildError(
            f"{out} already holds a complete store built from another config or other "
            "source files; pass --overwrite to replace it, or choose another --out"
        )
    if staging.exists():
        notes.append(
            f"the store said it was complete, but its staging folder {staging} was left: "
            "finished from it"
        )
        return None
    damaged = digest_mismatches(out)
    if damaged:
        notes.append(
            f"the store said it was complete, but {len(damaged)} shards did not hold their "
            f"recorded digests (first: {damaged[0]}): rebuilt"
        )
        return None
    summary = summary_from_attrs(out, existing, 0.0)
    summary.up_to_date = True
    return summary


def _run(
    plan: Plan,
    out: Path,
    staging: Path,
    workers: int,
    dask: str | None,
    strict: bool,
    progress: bool,
    t0: float,
) -> BuildSummary:
    """The four phases (each resumed where a run before stopped); ``t0``: when the build
    started."""
    records = start_staging(staging, plan)
    reused = len(records)
    with running(plan, staging, out, workers, dask) as runner:
        prepare_all(plan, runner, records, strict, progress)
        unified, layout, report = unify_plan(plan, records)
        if strict:
            fail_on_skips(report)
        attrs = store_attrs(plan, layout, report, complete=False)
        _prepare_store(out, attrs, unified)
        shards = list(range(n_shards(layout.n, layout.shard)))
        forget_unwritten(out, staging, shards)
        write_shards(runner, run_write_task, shards, layout, staging, progress)

    report.seconds = time.perf_counter() - t0
    report.workers = workers
    attrs = store_attrs(plan, layout, report, complete=True)
    _finalize(out, staging, attrs, layout)
    summary = summary_from_attrs(out, attrs, report.seconds)
    summary.reused_tasks = reused
    return summary


def _existing_attrs(out: Path) -> StoreAttrs | None:
    try:
        return read_attrs(open_group(out), out)
    except (StoreError, FileNotFoundError, ValueError, KeyError):
        return None


def _prepare_store(out: Path, attrs: StoreAttrs, unified: Unified) -> None:
    """Begin writing the store (an interrupted build's store of another plan is replaced)."""
    existing = _existing_attrs(out) if out.exists() else None
    if existing is not None and existing.build_fingerprint != attrs.build_fingerprint:
        remove_ours(out, STORE)
    StoreWriter.begin(out, attrs, unified.concepts)


def _finalize(out: Path, staging: Path, attrs: StoreAttrs, layout: Layout) -> None:
    written = [
        json.loads(written_path(staging, j).read_text())
        for j in range(n_shards(layout.n, layout.shard))
    ]
    StoreWriter(out).finish(attrs, merge_digests(written))
    shutil.rmtree(staging, ignore_errors=True)
