"""Helpers for tests that write or compare stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from broden.schema import CategorySpec, Concept, StoreAttrs
from broden.store import (
    CONCEPTS_ATTR,
    DIGESTS_ATTR,
    STORE_ATTR,
    Block,
    BrodenStore,
)
from broden.store import write_store as write_blocks


def write_store(
    path: Path,
    blocks: list[Block],
    categories: list[CategorySpec],
    concepts: list[Concept],
    image_size: int,
    shard: int,
) -> None:
    """A complete store from whole-shard blocks, written through the store's writer API."""
    n = sum(len(b) for b in blocks)
    attrs = StoreAttrs(
        complete=False,
        images=n,
        image_size=image_size,
        label_size=image_size // 2,
        shard_size=shard,
        categories=categories,
        sources=[
            {"name": "synthetic", "adapter": "test", "categories": [c.name for c in categories]}
        ],
        build_config={"splits": {"train": 0.7, "val": 0.3}},
        build_fingerprint="test",
        package_version="test",
        created="2026-11-25T00:00:00+00:00",
    )
    write_blocks(path, attrs, concepts, blocks)


def assert_stores_equal(a: Path, b: Path) -> None:
    """Same arrays, same concept table, same metadata (up to build time and worker count)."""
    sa, sb = BrodenStore(a), BrodenStore(b)
    assert sa.concepts == sb.concepts
    volatile = {"created", "build_report"}
    assert sa.attrs.model_dump(exclude=volatile) == sb.attrs.model_dump(exclude=volatile)
    assert sa.attrs.build_report.skipped == sb.attrs.build_report.skipped
    assert sa.attrs.build_report.dropped == sb.attrs.build_report.dropped
    assert sa.array_names() == sb.array_names()
    for name in sa.array_names():
        xa, xb = sa.array(name), sb.array(name)
        assert xa.attrs.get(DIGESTS_ATTR) == xb.attrs.get(DIGESTS_ATTR), name
        assert np.array_equal(np.asarray(xa[:]), np.asarray(xb[:])), name


def assert_groups_equal(a: Path, b: Path) -> None:
    """Every array of the two Zarr groups (found by walking the groups, not from the store's
    list of arrays) equal in dtype, shape, chunking, attributes and data; the same concept
    table and store attributes (up to build time and worker count)."""
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    arrays_a = {name: x for name, x in ga.members(max_depth=None) if isinstance(x, zarr.Array)}
    arrays_b = {name: x for name, x in gb.members(max_depth=None) if isinstance(x, zarr.Array)}
    assert sorted(arrays_a) == sorted(arrays_b)
    assert arrays_a, f"{a} holds no arrays"
    for name, xa in arrays_a.items():
        xb = arrays_b[name]
        layout_a = (xa.dtype, xa.shape, xa.chunks, xa.shards)
        assert layout_a == (xb.dtype, xb.shape, xb.chunks, xb.shards), name
        assert dict(xa.attrs) == dict(xb.attrs), name
        assert np.array_equal(np.asarray(xa[:]), np.asarray(xb[:])), name
    assert ga.attrs[CONCEPTS_ATTR] == gb.attrs[CONCEPTS_ATTR]
    volatile = {"created", "build_report"}
    store_a, store_b = ga.attrs[STORE_ATTR], gb.attrs[STORE_ATTR]
    assert isinstance(store_a, dict) and isinstance(store_b, dict)
    assert {k: v for k, v in store_a.items() if k not in volatile} == {
        k: v for k, v in store_b.items() if k not in volatile
    }
    assert_stores_equal(a, b)
