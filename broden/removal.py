"""Deleting only what broden made: the one rule for every path a user names.

``--overwrite`` and the other places that replace an output remove a folder only when it
is recognisably ours, and refuse anything else with one line naming the path and why:

- a **store** (:data:`STORE`): a folder whose ``zarr.json`` is a Zarr group with broden's
  attributes, holding nothing but a store's members (``zarr.json``, ``images``,
  ``pixel``, ``image``, ``meta`` and the temporary files of an atomic write);
- a **staging** folder (:data:`STAGING`) of a build or an add (``STORE.build``,
  ``STORE.add``), holding nothing but what :mod:`broden.build.staging` and
  :mod:`broden.extend` put there;
- the **report files** (:data:`REPORT_FILES`) of ``broden report``: one folder per layer
  holding only images (``.jpg``, ``.png``, ``.svg``);
- and, of any kind, an **empty** folder.

Never a file, a symbolic link, the current folder or one that holds it, a folder that
holds a path given in ``keep`` (a config file, a source folder), nor a folder holding
anything else. :func:`store_containing` says whether a path is a store or lies inside
one (an output there would be written into the store).

>>> remove_ours("old.zarr", STORE)                         # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from broden.errors import StoreError
from broden.store.layout import STORE_ATTR

Kind = Literal["store", "staging", "report files"]
STORE: Kind = "store"
STAGING: Kind = "staging"
REPORT_FILES: Kind = "report files"

#: what a store folder holds at its top (zarr.json and the groups of store.layout)
STORE_MEMBERS = frozenset({"zarr.json", "images", "pixel", "image", "meta"})
#: what the staging folder of a build or an add holds
STAGING_MEMBERS = frozenset(
    {"plan.json", "tasks", "written", "old.json", "tail.zarr", "tail.json", "migrated.json",
     "old_arrays"}
)  # fmt: skip
STAGING_SUFFIXES = (".build", ".add")
REPORT_SUFFIXES = frozenset({".jpg", ".png", ".svg"})
#: the temporary files of an atomic write (zarr's, broden.store.metadata's, staging's)
_TEMPORARY = re.compile(r"^\..+\.tmp$|\.tmp\d+$|\.[0-9a-f]{32}\.partial$")


def is_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder whose ``zarr.json`` is a group with broden's attributes
    (complete or not; its arrays are not looked at)."""
    doc_path = Path(path) / "zarr.json"
    try:
        doc = json.loads(doc_path.read_text())
    except (OSError, ValueError):
        return False
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    return (
        doc.get("node_type") == "group"
        and isinstance(attrs, dict)
        and isinstance(attrs.get(STORE_ATTR), dict)
    )


def store_containing(path: str | os.PathLike[str]) -> Path | None:
    """The broden store that ``path`` is, or lies inside (as resolved, following links);
    None when there is none."""
    p = Path(path).resolve()
    for candidate in (p, *p.parents):
        if is_store(candidate):
            return candidate
    return None


def _foreign(entries: Iterable[Path], allowed: frozenset[str]) -> list[str]:
    return sorted(
        e.name for e in entries if e.name not in allowed and not _TEMPORARY.search(e.name)
    )


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _not_ours(path: Path, kind: Kind, entries: list[Path]) -> str | None:
    """Why the non-empty folder ``path`` is not a ``kind`` broden made (None: it is)."""
    if kind == STORE:
        if not is_store(path):
            return "it is not a broden store (no zarr.json with broden's attributes)"
        other = _foreign(entries, STORE_MEMBERS)
        if other:
            return f"it is a broden store but also holds other files ({_listing(other)})"
        return None
    if kind == STAGING:
        if not path.name.endswith(STAGING_SUFFIXES):
            return "it is not the staging folder of a build or an add"
        other = _foreign(entries, STAGING_MEMBERS)
        if other:
            return f"it holds files a build never writes there ({_listing(other)})"
        return None
    other = [e.name for e in entries if not e.is_dir() or e.is_symlink()]
    for layer in entries:
        if layer.is_dir() and not layer.is_symlink():
            for f in layer.iterdir():
                if f.suffix not in REPORT_SUFFIXES or not f.is_file() or f.is_symlink():
                    other.append(f"{layer.name}/{f.name}")
    if other:
        return f"it holds files a report never writes there ({_listing(sorted(other))})"
    return None


def refusal(
    path: str | os.PathLike[str], kind: Kind, keep: Iterable[str | os.PathLike[str]] = ()
) -> str | None:
    """Why ``path`` must not be deleted as a ``kind`` (a sentence), or None when it may:
    it is a ``kind`` broden made or an empty folder, and holds neither the current folder
    nor any of ``keep``. A path that does not exist may be "deleted" (nothing happens)."""
    p = Path(path)
    if p.is_symlink():
        return "it is a symbolic link (broden removes only folders it made)"
    if not p.exists():
        return None
    if not p.is_dir():
        return "it is a file, not a folder broden made"
    real = p.resolve()
    try:
        cwd: Path | None = Path.cwd().resolve()
    except OSError:  # the current folder was deleted: nothing can hold it
        cwd = None
    if cwd is not None and real == cwd:
        return "it is the current folder"
    if cwd is not None and real in cwd.parents:
        return f"it holds the current folder {cwd}"
    for k in keep:
        kept = Path(k).resolve()
        if kept == real or real in kept.parents:
            return f"it holds {k}, which this command reads"
    try:
        entries = list(p.iterdir())
    except OSError as e:
        return f"it cannot be listed ({e.strerror})"
    if not entries:
        return None
    return _not_ours(p, kind, entries)


def remove_ours(
    path: str | os.PathLike[str], kind: Kind, keep: Iterable[str | os.PathLike[str]] = ()
) -> bool:
    """Delete ``path`` if it is a ``kind`` broden made (see :func:`refusal`); True if
    something was deleted, False if there was nothing. Anything else is a
    :class:`~broden.errors.StoreError` naming the path and why, and nothing is deleted."""
    p = Path(path)
    why = refusal(p, kind, keep)
    if why is not None:
        raise StoreError(f"refusing to delete {p}: {why}")
    if not p.exists():
        return False
    try:
        shutil.rmtree(p)
    except OSError as e:
        raise StoreError(f"cannot delete {p}: {e.strerror} ({e.filename})") from None
    return True
