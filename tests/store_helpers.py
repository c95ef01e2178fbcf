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
    create_arrays,
    write_block,
)


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
    group = zarr.open_group(str(path), mode="w")
    group.attrs[STORE_ATTR] = attrs.model_dump(mode="json")
    group.attrs[CONCEPTS_ATTR] = [c.model_dump(mode="json") for c in concepts]
    create_arrays(group, n, image_size, image_size // 2, shard, categories)
    digests: dict[str, list[str]] = {}
    start = 0
    for blk in blocks:
        for name, d in write_block(group, start, blk).items():
            digests.setdefault(name, []).append(d)
        start += len(blk)
    for name, ds in digests.items():
        group[name].attrs[DIGESTS_ATTR] = ds
    attrs.complete = True
    group.attrs[STORE_ATTR] = attrs.model_dump(mode="json")


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
