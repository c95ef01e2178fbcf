"""One writer at a time: the exclusive lock of a store, ``STORE.lock`` beside it.

Every command that writes a store (``build``, ``add``, ``upgrade``) holds
:func:`store_lock` while it runs: an OS lock (``flock``, exclusive, non-blocking) on the
file ``STORE.lock`` next to the store, which holds the writer's process id. A second
writer fails at once with a :class:`~broden.errors.StoreError` naming the store and that
process id. The operating system releases the lock when its process ends however it
ends (``kill -9`` too), so there is never a stale lock to clear by hand: a file left by a
killed writer is simply locked again by the next one. A writer that finishes removes the
file (while it still holds the lock; a writer that had opened the old file sees it is
gone and opens the new one). Only the process that took the lock holds it: build workers
are spawned processes and inherit none of its descriptors.

>>> with store_lock("broden.zarr"):                     # doctest: +SKIP
...     ...  # write the store
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from broden.errors import StoreError


def lock_path(store: str | os.PathLike[str]) -> Path:
    """``STORE.lock``, beside the store (of its absolute path: ``.`` works too)."""
    p = Path(os.path.abspath(store))
    return p.with_name(p.name + ".lock")


def _holder(fd: int) -> str:
    """The process id written in the lock file open at ``fd`` (it is written just after the
    lock is taken: wait a moment for it)."""
    for _ in range(50):
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if text:
            return text.split()[0]
        time.sleep(0.01)
    return "unknown"


def _acquire(store: Path, path: Path) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StoreError(
                f"{store}: cannot create its lock file {path} ({e.strerror}); is the folder "
                "writable?"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise StoreError(
                f"{store} is being written by another process (PID {pid}, holding {path}); "
                "wait for it to finish (or stop that process) and run this command again"
            ) from None
        try:  # the holder before us may have removed the file between our open and flock
            current = os.stat(path)
            same = (current.st_dev, current.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def store_lock(store: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the store's exclusive write lock for the ``with`` block (its path is yielded).

    The folder the store goes in is created if need be. :class:`~broden.errors.StoreError`
    at once if another process holds the lock (naming its PID), or if the lock file cannot
    be created."""
    store = Path(store)
    path = lock_path(store)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocked} is a file, not a folder" if blocked is not None else e.strerror
        raise StoreError(f"{store}: cannot create the folder {path.parent} ({why})") from None
    fd = _acquire(store, path)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        with suppress(OSError):  # a read-only folder: the file stays, unlocked
            path.unlink(missing_ok=True)  # while still holding the lock
        os.close(fd)
