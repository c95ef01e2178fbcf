"""``broden upgrade``: make a store of an earlier broden readable by xarray.

Stores written before broden recorded dimension names (format version 1 all the same)
have arrays without Zarr v3 ``dimension_names``, which xarray needs, and no consolidated
metadata. :func:`upgrade_store` adds both, to a complete store, as metadata only: every
array's ``zarr.json`` gets its names (:func:`~broden.store.layout.dimension_names`), no
chunk is rewritten, so the shard digests and the store's fingerprint stay as they were;
the consolidated metadata is written last, as at the end of a build. It also rewrites
consolidated metadata that went stale (left by another writer). Running it again
changes nothing. :func:`upgrade_hint` is the line ``broden validate`` can print about it.

>>> upgrade_store("old.zarr")                               # doctest: +SKIP
['images: dimension names (image, y, x, rgb)', ..., 'consolidated metadata written']
"""

from __future__ import annotations

from pathlib import Path

from broden.errors import StoreError
from broden.store.layout import dimension_names
from broden.store.lock import store_lock
from broden.store.metadata import (
    consolidate,
    consolidated_differences,
    drop_consolidated,
    recorded_dimension_names,
    set_dimension_names,
)
from broden.store.reader import BrodenStore


def _todo(path: Path) -> tuple[list[tuple[str, tuple[str, ...]]], list[str] | None]:
    """(arrays whose dimension names are missing or others, with the right ones; the
    consolidated metadata's stale nodes, or None if there is none) of a complete store."""
    store = BrodenStore(path, require_complete=False)
    if not store.attrs.complete:
        raise StoreError(
            f"{path}: the store is incomplete (an interrupted or running build or add), so "
            "there is nothing to upgrade yet: run that same `broden build` or `broden add` "
            "again; it finishes the store readable by xarray"
        )
    arrays = []
    for name in store.array_names():
        want = dimension_names(name)
        try:
            got = recorded_dimension_names(path / name)
        except FileNotFoundError:
            raise StoreError(f"{path}: array {name!r} is missing; run `broden validate`") from None
        if got != list(want):
            arrays.append((name, want))
    return arrays, consolidated_differences(path)


def upgrade_store(path: str | Path) -> list[str]:
    """Record the dimension names of every array of the complete store at ``path`` and
    write its consolidated metadata (metadata only: data, shard digests and fingerprint
    unchanged); what it changed, one line each (empty: the store was up to date).

    :class:`~broden.errors.StoreError` if ``path`` is not a complete Broden store, or if
    another process is writing it (it holds the store's lock, :mod:`~broden.store.lock`)."""
    path = Path(path)
    _todo(path)  # not a store: said before a lock file is made beside it
    with store_lock(path):
        return _upgrade(path)


def _upgrade(path: Path) -> list[str]:
    arrays, stale = _todo(path)
    if not arrays and stale == []:
        return []
    changes = []
    drop_consolidated(path)  # first: an interrupted upgrade leaves no stale copy
    for name, names in arrays:
        set_dimension_names(path / name, names)
        changes.append(f"{name}: dimension names ({', '.join(names)})")
    consolidate(path)
    if stale is None:
        changes.append("consolidated metadata written")
    elif stale:
        changes.append(f"consolidated metadata rewritten (it was stale for {', '.join(stale)})")
    else:
        changes.append("consolidated metadata rewritten with the dimension names")
    return changes


def upgrade_hint(path: str | Path) -> str | None:
    """One line saying what ``broden upgrade`` would do to the store at ``path``, or None
    when it would do nothing (or the store is incomplete or unreadable: ``broden
    validate`` reports that)."""
    try:
        arrays, stale = _todo(Path(path))
    except (StoreError, OSError, ValueError):
        return None
    if not arrays and stale == []:
        return None
    missing = []
    if arrays:
        missing.append(f"{len(arrays)} arrays have no dimension names")
    if stale is None:
        missing.append("there is no consolidated metadata")
    elif stale:
        missing.append(f"its consolidated metadata is stale ({', '.join(stale)})")
    return (
        f"{'; '.join(missing)} (a store of an earlier broden?): `broden upgrade {path}` "
        "makes it readable by xarray (metadata only; data and digests stay as they are)"
    )
