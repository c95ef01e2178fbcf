"""``broden validate``: every problem of a store, from its metadata to each shard's content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from broden.adapters.categories import category_sort_key
from broden.errors import StoreError
from broden.store.layout import DIGESTS_ATTR, array_name, digest_matches
from broden.store.metadata import consolidated_differences
from broden.store.reader import BrodenStore


def validate_store(path: str | Path, check_data: bool = True) -> list[str]:
    """Every problem found in a store (empty list: valid).

    Checks the metadata schema, the completion flag, every array's presence, shape and
    dtype, the concept table, that consolidated metadata (if any) is current, and
    (``check_data``) every shard's content against the digest recorded at build time,
    every label id against the concept table, and the metadata values. A store of an
    earlier broden (no dimension names, no consolidated metadata) is valid: see
    :func:`~broden.store.upgrade.upgrade_hint`.
    """
    path = Path(path)
    try:
        store = BrodenStore(path, require_complete=False)
    except StoreError as e:
        return [str(e)]
    problems: list[str] = []
    a = store.attrs
    if not a.complete:
        problems.append("store is incomplete: its build did not finish (run it again to resume)")
    else:
        problems.extend(_consolidation_problems(path))
    if a.label_size != a.image_size // 2:
        problems.append(f"label_size {a.label_size} is not image_size // 2 = {a.image_size // 2}")
    order = sorted(a.categories, key=lambda c: category_sort_key(c.name))
    if [c.name for c in a.categories] != [c.name for c in order]:
        problems.append("categories are not in hierarchy order")

    C = len(store.concepts)
    ids = [c.id for c in store.concepts]
    if ids != list(range(1, C + 1)):
        problems.append("concept ids are not 1..C in order")
    names = [c.name for c in store.concepts]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"concept names appear twice: {dup[:5]}")
    cat_names = {c.name for c in a.categories}
    for c in store.concepts:
        if c.category not in cat_names:
            problems.append(f"concept {c.id} ({c.name}) has unknown category {c.category!r}")
        for edge in c.part_of:
            if not 1 <= edge.id <= C:
                problems.append(f"concept {c.id} ({c.name}) is part_of unknown concept {edge.id}")

    N, S, L = a.images, a.image_size, a.label_size
    expected: dict[str, tuple[tuple[int, ...], str]] = {"images": ((N, S, S, 3), "uint8")}
    for cat in a.categories:
        if cat.kind == "pixel":
            expected[array_name(cat)] = ((N, cat.layers, L, L), "uint16")
        else:
            expected[array_name(cat)] = ((N, cat.layers), "uint16")
    expected["meta/orig_size"] = ((N, 2), "int32")
    present: dict[str, zarr.Array] = {}
    for name, (shape, dtype) in expected.items():
        try:
            arr = store.array(name)
        except StoreError as e:
            problems.append(str(e).split(": ", 1)[-1])
            continue
        if arr.shape != shape or str(arr.dtype) != dtype:
            problems.append(f"{name}: expected {dtype} {shape}, found {arr.dtype} {arr.shape}")
            continue
        present[name] = arr
    for name in ("meta/source", "meta/source_id", "meta/split"):
        try:
            arr = store.array(name)
        except StoreError as e:
            problems.append(str(e).split(": ", 1)[-1])
            continue
        if arr.shape != (N,):
            problems.append(f"{name}: expected shape {(N,)}, found {arr.shape}")
            continue
        present[name] = arr
    if not check_data or not a.complete:
        return problems

    splits = set(a.build_config.get("splits", {"train": 0.7, "val": 0.3}))
    sources = {s.name for s in a.sources}
    shard = a.shard_size
    for name, arr in present.items():
        digests = arr.attrs.get(DIGESTS_ATTR)
        n_shards = -(-N // shard)
        if not isinstance(digests, list) or len(digests) != n_shards:
            problems.append(f"{name}: shard digests missing from its attributes")
            digests = None
        for j, start in enumerate(range(0, N, shard)):
            stop = min(start + shard, N)
            where = f"{name} shard {j} (images {start}-{stop - 1})"
            try:
                data = np.asarray(arr[start:stop])
            except Exception as e:  # a damaged shard file raises from the codec
                problems.append(f"{where}: unreadable ({type(e).__name__}: {e})")
                continue
            if digests is not None and not digest_matches(data, str(digests[j])):
                problems.append(
                    f"{where}: content differs from the digest recorded at build time "
                    "(missing or damaged shard file)"
                )
            if name.startswith(("pixel/", "image/")):
                bad = np.unique(data[data > C])
                if bad.size:
                    problems.append(
                        f"{where}: label ids {bad[:5].tolist()} are not in the concept table "
                        f"(1..{C})"
                    )
            elif name == "meta/source":
                unknown = {str(s) for s in data} - sources
                if unknown:
                    problems.append(f"{where}: unknown source names {sorted(unknown)[:5]}")
            elif name == "meta/split":
                unknown = {str(s) for s in data} - splits
                if unknown:
                    problems.append(f"{where}: unknown split names {sorted(unknown)[:5]}")
            elif name == "meta/source_id":
                if any(not str(s) for s in data):
                    problems.append(f"{where}: empty source ids")
            elif name == "meta/orig_size" and (data <= 0).any():
                problems.append(f"{where}: non-positive original sizes")
    if "meta/source_id" in present and "meta/source" in present:
        pairs = list(
            zip(
                (str(s) for s in np.asarray(present["meta/source"][:])),
                (str(s) for s in np.asarray(present["meta/source_id"][:])),
                strict=True,
            )
        )
        if len(set(pairs)) != len(pairs):
            problems.append("meta/source_id: an image id appears twice within one source")
    return problems


def _consolidation_problems(path: Path) -> list[str]:
    """A complete store's consolidated metadata, where there is some, must be current:
    readers that trust it (xarray, zarr) would see other shapes or attributes."""
    try:
        stale = consolidated_differences(path)
    except (OSError, ValueError, StoreError) as e:
        return [f"consolidated metadata unreadable ({type(e).__name__}: {e})"]
    if not stale:
        return []
    return [
        f"consolidated metadata is stale for {', '.join(stale[:5])}"
        f"{' ...' if len(stale) > 5 else ''} (the store changed after it was consolidated; "
        f"xarray would read the old metadata): `broden upgrade {path}` rewrites it"
    ]
