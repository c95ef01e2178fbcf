"""The staging folder of a build (``STORE.build/``) and each worker process's context.

``plan.json`` (the plan's fingerprint), ``tasks/NNNNN.zarr`` + ``tasks/NNNNN.json`` (a
prepared task's arrays, then its record, written last: a task is done when its record is
there), ``written/NNNNN.json`` (a written shard's digests). Every record is written
atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broden.errors import BuildError

if TYPE_CHECKING:
    from broden.build.plan import Plan


@dataclass(frozen=True)
class WorkerContext:
    """What every task of a build reads: the plan, the staging folder, the store."""

    plan: Plan
    staging: Path
    store: Path


_CONTEXT: list[WorkerContext] = []  # this process's context, set once by init_worker


def init_worker(plan: Plan, staging: str, store: str) -> None:
    """Set this process's context (the runners' initializer; in-process: called directly)."""
    _CONTEXT[:] = [WorkerContext(plan, Path(staging), Path(store))]


def clear_worker() -> None:
    """Forget this process's context (the build is over)."""
    _CONTEXT.clear()


def worker() -> WorkerContext:
    """This process's context (inside a build task)."""
    if not _CONTEXT:
        raise RuntimeError("a build task ran outside a build (no worker context)")
    return _CONTEXT[0]


def written_path(staging: Path, shard: int) -> Path:
    """The record of a written shard: its arrays' digests."""
    return staging / "written" / f"{shard:05d}.json"


def task_paths(staging: Path, task: int) -> tuple[Path, Path]:
    return staging / "tasks" / f"{task:05d}.zarr", staging / "tasks" / f"{task:05d}.json"


def atomic_write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def staging_path(store: Path) -> Path:
    return store.with_name(store.name + ".build")


def load_records(staging: Path, plan: Plan) -> dict[int, dict[str, Any]]:
    records = {}
    for t in range(len(plan.tasks)):
        arrays, path = task_paths(staging, t)
        if path.exists() and arrays.exists():
            try:
                rec = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue  # rewritten below
            if rec.get("fingerprint") == plan.fingerprint:
                records[t] = rec
    return records


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
        atomic_write_json(plan_file, {"fingerprint": plan.fingerprint, "tasks": len(plan.tasks)})
    return load_records(staging, plan)
