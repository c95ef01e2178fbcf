"""Running the phases of a build (or an add) on the configured runner: prepare every
task not yet done, write every shard not yet written, with a progress bar each."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from broden.build.layout import Layout, assemble_rows
from broden.build.plan import Plan
from broden.build.prepare import run_prepare_task
from broden.build.runners import Runner, make_runner
from broden.build.staging import (
    atomic_write_json,
    clear_worker,
    init_worker,
    worker,
    written_path,
)
from broden.errors import BuildError
from broden.schema import BuildReport
from broden.store import StoreWriter


@contextmanager
def running(
    plan: Plan, staging: Path, out: Path, workers: int, dask: str | None
) -> Iterator[Runner]:
    """The runner of ``--workers``/``--dask``, every worker set up for ``plan`` (a dead
    worker or an unusable cluster is a :class:`~broden.errors.RunnerError`, a
    ``BuildError``); closed at the end."""
    runner = make_runner(
        workers, dask, init_worker, (plan, str(staging), str(out)), plan.fingerprint
    )
    try:
        yield runner
    finally:
        runner.close()
        clear_worker()


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


def write_shards(
    runner: Runner,
    task: Callable[..., Any],
    shards: list[int],
    layout: Any,
    staging: Path,
    progress: bool,
) -> None:
    """Run ``task(shard, layout)`` for every shard of ``shards`` not recorded as written."""
    written = {j for j in shards if written_path(staging, j).exists()}
    bar = tqdm(total=len(shards), initial=len(written), desc="write", unit="shard",
               disable=not progress)  # fmt: skip
    runner.run(task, [(j, layout) for j in shards if j not in written], lambda *_: bar.update(1))
    bar.close()


def fail_on_skips(report: BuildReport) -> None:
    """``--strict``: the first skipped sample fails the run."""
    if report.skipped:
        s = report.skipped[0]
        raise BuildError(f"--strict: sample {s.source}:{s.source_id} cannot be used: {s.reason}")


def run_write_task(shard: int, layout: Layout) -> dict[str, str]:
    """Assemble and write one store shard; record its digests."""
    start = shard * layout.shard
    stop = min(start + layout.shard, layout.n)
    digests = StoreWriter(worker().store).write_shard(shard, assemble_rows(layout, start, stop))
    atomic_write_json(written_path(worker().staging, shard), digests)
    return digests


def forget_unwritten(out: Path, staging: Path, shards: list[int]) -> None:
    """A resumed build or add trusts a shard recorded as written only if the store holds it (it
    reads back with the recorded digests); any other is written again."""
    writer = StoreWriter(out)
    for j in shards:
        path = written_path(staging, j)
        if not path.exists():
            continue
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError):
            recorded = None
        if not isinstance(recorded, dict) or not writer.shard_holds(j, recorded):
            path.unlink()
