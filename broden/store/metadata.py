"""The store's ``zarr.json`` documents, edited at the level of the Zarr v3 specification:
arrays' ``dimension_names`` and the root group's consolidated metadata.

Consolidated metadata (zarr-python's ``consolidated_metadata`` member of the root
``zarr.json``: a copy of every node's metadata) lets xarray and zarr open a store with one
read, but it is a copy: it goes stale when an array's shape or attributes change. The
write protocol (:mod:`~broden.store.writer`) therefore removes it before changing anything
and writes it as the very last step of a complete store, and broden itself never reads it
(:func:`~broden.store.reader.open_group` reads the live metadata). zarr-python has no call
that removes it, so :func:`drop_consolidated` rewrites the root document without that
member. Every rewrite here is atomic (a temporary file, then :func:`os.replace`).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zarr
from zarr.errors import ZarrUserWarning

from broden.errors import StoreError

#: the root group's member holding the consolidated metadata
CONSOLIDATED = "consolidated_metadata"
#: zarr's JSON indentation (its ``json_indent`` setting's default)
_INDENT = 2


def read_json(path: Path) -> dict[str, Any]:
    """The JSON document at ``path`` (a ``zarr.json``). A file that is not a JSON object
    (truncated, emptied, overwritten) is a :class:`StoreError` naming it; a missing one
    is :class:`FileNotFoundError`, and the other errors of the file system are left to
    the caller too."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:  # json's JSONDecodeError is a ValueError
        raise StoreError(
            f"{path}: damaged Zarr metadata (truncated or overwritten?): not valid JSON: {e}"
        ) from None
    except RecursionError:
        raise StoreError(f"{path}: damaged Zarr metadata, nested too deeply") from None
    if not isinstance(doc, dict):
        raise StoreError(
            f"{path}: damaged Zarr metadata: expected a JSON object, got {type(doc).__name__}"
        )
    return doc


def replace_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically (readers see the old or the new document)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=_INDENT, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def drop_consolidated(root: str | os.PathLike[str]) -> bool:
    """Remove the consolidated metadata from the root group of the store at ``root``; True
    if there was some (no store, or none there: nothing happens)."""
    path = Path(root) / "zarr.json"
    try:
        doc = read_json(path)
    except FileNotFoundError:
        return False
    if CONSOLIDATED not in doc:
        return False
    had = doc.pop(CONSOLIDATED) is not None
    replace_json(path, doc)
    return had


def consolidate(root: str | os.PathLike[str]) -> None:
    """Write the consolidated metadata of the store at ``root`` (zarr's
    :func:`zarr.consolidate_metadata`, without its warning that consolidated metadata is
    not yet part of the Zarr v3 specification)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Consolidated metadata", ZarrUserWarning)
        zarr.consolidate_metadata(str(root))


def live_nodes(root: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every node below the root group (path → its ``zarr.json``), read from the files."""
    found: dict[str, dict[str, Any]] = {}

    def walk(folder: Path, prefix: str) -> None:
        for child in sorted(folder.iterdir()):
            doc_path = child / "zarr.json"
            if not doc_path.is_file():
                continue
            doc = read_json(doc_path)
            found[prefix + child.name] = doc
            if doc.get("node_type") == "group":
                walk(child, f"{prefix}{child.name}/")

    walk(Path(root), "")
    return found


def consolidated_differences(root: str | os.PathLike[str]) -> list[str] | None:
    """None if the store at ``root`` has no consolidated metadata; else the nodes whose
    consolidated copy differs from their live metadata (empty: the copy is current)."""
    doc = read_json(Path(root) / "zarr.json")
    cons = doc.get(CONSOLIDATED)
    if cons is None:
        return None
    live = live_nodes(root)
    copies = cons.get("metadata") if isinstance(cons, dict) else None
    if not isinstance(copies, dict):  # a damaged copy is as stale as can be
        return sorted(live)

    def bare(meta: Any) -> Any:  # a group's copy carries its own (empty) consolidated member
        if not isinstance(meta, dict):
            return meta
        return {k: v for k, v in meta.items() if k != CONSOLIDATED}

    return sorted(
        name
        for name in set(copies) | set(live)
        if name not in copies or name not in live or bare(copies[name]) != bare(live[name])
    )


def recorded_dimension_names(array_dir: Path) -> list[str] | None:
    """The ``dimension_names`` recorded in the array at ``array_dir`` (None: none)."""
    names = read_json(array_dir / "zarr.json").get("dimension_names")
    if not isinstance(names, list):  # none, or damaged: to be written again
        return None
    return list(names)


def set_dimension_names(array_dir: Path, names: Sequence[str]) -> bool:
    """Record ``names`` as the dimension names of the array at ``array_dir`` (its
    ``zarr.json`` only: no data is touched); True if they changed."""
    path = array_dir / "zarr.json"
    doc = read_json(path)
    if doc.get("node_type") != "array":
        raise StoreError(f"{array_dir}: not a Zarr array")
    shape = doc.get("shape")
    if not isinstance(shape, list):
        raise StoreError(f"{path}: damaged Zarr metadata: no shape; run `broden validate`")
    if len(shape) != len(names):
        raise StoreError(
            f"{array_dir}: {len(shape)} dimensions, but the layout names "
            f"{len(names)} ({', '.join(names)}); run `broden validate`"
        )
    if doc.get("dimension_names") == list(names):
        return False
    doc["dimension_names"] = list(names)
    replace_json(path, doc)
    return True
