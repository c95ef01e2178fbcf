"""The store's write protocol, owned by broden.store.StoreWriter: incomplete until the
digests of every shard and then the completion flag are written, whole shards only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from broden.errors import StoreError
from broden.schema import CategorySpec, StoreAttrs
from broden.store import (
    DIGESTS_ATTR,
    StoreWriter,
    array_name,
    array_names,
    merge_digests,
    open_store,
    shard_digest,
    validate_store,
)
from tests.test_store import CATS, S, concepts, random_blocks


def attrs(n: int, shard: int) -> StoreAttrs:
    return StoreAttrs(
        images=n, image_size=S, label_size=S // 2, shard_size=shard, categories=CATS,
        sources=[{"name": "synthetic", "adapter": "test", "categories": ["object", "scene"]}],
        build_config={"splits": {"train": 0.7, "val": 0.3}}, build_fingerprint="t",
        package_version="t", created="2026-12-02T00:00:00+00:00",
    )  # fmt: skip


def test_array_names_follow_the_category_kind() -> None:
    assert array_name(CategorySpec(name="object", kind="pixel", layers=2)) == "pixel/object"
    assert array_name("scene", "image") == "image/scene"
    assert array_names(CATS) == [
        "images", "pixel/object", "image/scene",
        "meta/source", "meta/source_id", "meta/split", "meta/orig_size",
    ]  # fmt: skip


def test_a_store_is_incomplete_until_finish_and_then_reads_back(tmp_path: Path) -> None:
    blocks = random_blocks(np.random.default_rng(1), [4, 3], 9)
    a = attrs(7, 4)
    writer = StoreWriter.begin(tmp_path / "s.zarr", a, concepts(9))
    worker = StoreWriter(writer.path)  # as in a worker process
    digests = merge_digests(worker.write_shard(j, b) for j, b in enumerate(blocks))
    with pytest.raises(StoreError, match="incomplete"):
        open_store(writer.path)
    assert "store is incomplete" in " ".join(validate_store(writer.path))
    with pytest.raises(StoreError, match="pixel/object has digests of 1 shards, not 2"):
        StoreWriter(writer.path).finish(a, {**digests, "pixel/object": digests["pixel/object"][:1]})
    assert not open_store(writer.path, require_complete=False).attrs.complete
    StoreWriter(writer.path).finish(a, digests)
    store = open_store(writer.path)
    assert store.attrs.complete and validate_store(writer.path) == []
    assert np.array_equal(store.read_block(4, 7).pixel["object"], blocks[1].pixel["object"])
    assert store.array("images").attrs[DIGESTS_ATTR][1] == shard_digest(blocks[1].images)


def test_only_whole_shards_are_written(tmp_path: Path) -> None:
    blocks = random_blocks(np.random.default_rng(2), [4, 3], 9)
    writer = StoreWriter.begin(tmp_path / "s.zarr", attrs(7, 4), concepts(9))
    with pytest.raises(ValueError, match="shard 1 is rows 4-6"):
        writer.write_shard(1, blocks[0])
    with pytest.raises(ValueError, match="begins incomplete"):
        StoreWriter.begin(tmp_path / "t.zarr", attrs(7, 4).model_copy(update={"complete": True}),
                          concepts(9))  # fmt: skip


def test_a_restarted_store_keeps_its_written_shards_and_grows(tmp_path: Path) -> None:
    blocks = random_blocks(np.random.default_rng(3), [4, 4], 9)
    a = attrs(8, 4)
    w = StoreWriter.begin(tmp_path / "s.zarr", a, concepts(9))
    first = w.write_shard(0, blocks[0])
    w = StoreWriter.begin(tmp_path / "s.zarr", a, concepts(9))  # a resumed run: shard 0 kept
    second = w.write_shard(1, blocks[1])
    w.ensure_arrays(12, CATS)  # an add grows every array, old rows kept
    assert w.array("images").shape[0] == 12
    assert np.array_equal(np.asarray(w.array("images")[:4]), blocks[0].images)
    assert first["images"] == shard_digest(np.asarray(w.array("images")[:4]))
    assert second["meta/source_id"] == shard_digest(np.array(blocks[1].source_id, dtype=str))
