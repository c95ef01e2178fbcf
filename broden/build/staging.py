"""The staging folder of a build (``STORE.build/``) and each worker process's context.

``plan.json`` (the plan's fingerprint), ``tasks/NNNNN.zarr`` + ``tasks/NNNNN.json`` (a
prepared task's arrays, then its record, written last: a task is done when its record is
there and every file of its arrays is as the record lists it, size and digest; anything
else is prepared again, never read as zeros), ``written/NNNNN.json`` (a written shard's
digests). Every record is written atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import hashlib
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


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def task_files(arrays: Path) -> dict[str, list[Any]]:
    """Every file of a task's staged arrays (``NNNNN.zarr``): relative path → [size,
    digest of its bytes]; what its record lists, and what :func:`load_records` checks."""
    files = {}
    for f in sorted(arrays.rglob("*")):
        if f.is_file():
            files[f.relative_to(arrays).as_posix()] = [f.stat().st_size, _file_digest(f)]
    return files


def _intact(arrays: Path, files: Any) -> bool:
    """Whether every file the record lists is there with its size and digest."""
    if not isinstance(files, dict) or not files:
        return False
    try:
        for name, (size, digest) in files.items():
            f = arrays / name
            if f.stat().st_size != size or _file_digest(f) != digest:
                return False
    except (OSError, TypeError, ValueError):
        return False
    return True


def load_records(staging: Path, plan: Plan) -> dict[int, dict[str, Any]]:
    """The records of the tasks of ``plan`` that are done: a record of this plan whose
    arrays are all there, whole (an earlier broden's record, which lists no files, is not
    trusted: its task is prepared again)."""
    records = {}
    for t in range(len(plan.tasks)):
        arrays, path = task_paths(staging, t)
        if path.exists() and arrays.exists():
            try:
                rec = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError, UnicodeDecodeError):
                continue  # rewritten below
            if (
                isinstance(rec, dict)
                and rec.get("fingerprint") == plan.fingerprint
                and _intact(arrays, rec.get("files"))
            ):
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
