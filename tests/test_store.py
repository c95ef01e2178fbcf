"""The store: what is written reads back, the sample store holds what its sources say,
and the validator catches damage."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from broden.schema import CategorySpec, CategoryStat, Concept
from broden.store import Block, BrodenStore, StoreError, open_store, validate_store
from tests.conftest import ADE_STREET, SAMPLES
from tests.store_helpers import write_store

S = 16


def random_blocks(rng: np.random.Generator, sizes: list[int], n_concepts: int) -> list[Block]:
    blocks = []
    for i, n in enumerate(sizes):
        obj = rng.integers(0, n_concepts + 1, (n, 2, S // 2, S // 2), dtype=np.uint16)
        if i == 1:
            obj[:] = 0  # an all-zero shard: zarr does not write it, it must still read back
        blocks.append(
            Block(
                images=rng.integers(0, 256, (n, S, S, 3), dtype=np.uint8),
                pixel={"object": obj},
                image_labels={"scene": rng.integers(0, n_concepts + 1, (n, 1), dtype=np.uint16)},
                source=["synthetic"] * n,
                source_id=[f"img_{i}_{k}.jpg" for k in range(n)],
                split=[("train", "val")[k % 2] for k in range(n)],
                orig_size=rng.integers(1, 999, (n, 2)).astype(np.int32),
            )
        )
    return blocks


def concepts(n: int) -> list[Concept]:
    return [
        Concept(
            id=i,
            name=f"c{i}",
            category="object" if i % 2 else "scene",
            categories=[CategoryStat(name="object" if i % 2 else "scene", frequency=1, coverage=1)],
            frequency=1,
            coverage=1.0,
        )
        for i in range(1, n + 1)
    ]


CATS = [
    CategorySpec(name="object", kind="pixel", layers=2),
    CategorySpec(name="scene", kind="image", layers=1),
]


@pytest.fixture
def small_store(tmp_path: Path) -> tuple[Path, list[Block]]:
    blocks = random_blocks(np.random.default_rng(0), [4, 4, 3], 9)
    path = tmp_path / "small.zarr"
    write_store(path, blocks, CATS, concepts(9), S, shard=4)
    return path, blocks


def test_store_reads_back_what_was_written(small_store: tuple[Path, list[Block]]) -> None:
    path, blocks = small_store
    store = open_store(path)
    assert len(store) == 11 and list(store.shards()) == [(0, 4), (4, 8), (8, 11)]
    start = 0
    for blk in blocks:
        got = store.read_block(start, start + len(blk))
        assert np.array_equal(got.images, blk.images)
        assert np.array_equal(got.pixel["object"], blk.pixel["object"])
        assert np.array_equal(got.image_labels["scene"], blk.image_labels["scene"])
        assert got.source_id == blk.source_id and got.split == blk.split
        assert np.array_equal(got.orig_size, blk.orig_size)
        for k in range(len(blk)):
            s = store.sample(start + k)
            assert np.array_equal(s.image, blk.images[k])
            assert np.array_equal(s.pixel["object"], blk.pixel["object"][k])
            assert s.source_id == blk.source_id[k]
        start += len(blk)
    assert validate_store(path) == []


def test_store_is_readable_with_zarr_alone(small_store: tuple[Path, list[Block]]) -> None:
    path, blocks = small_store
    g = zarr.open_group(str(path), mode="r")
    assert np.array_equal(g["images"][4:8], blocks[1].images)
    assert g.attrs["broden"]["categories"][0] == {"name": "object", "kind": "pixel", "layers": 2}
    assert g.attrs["concepts"][0]["name"] == "c1"
    assert str(g["meta/source_id"][0]) == "img_0_0.jpg"


def test_a_store_pickles_and_reopens(small_store: tuple[Path, list[Block]]) -> None:
    import pickle

    path, blocks = small_store
    store = pickle.loads(pickle.dumps(open_store(path)))
    assert np.array_equal(store.image(5), blocks[1].images[1])


def test_deleted_shard_file_is_found(small_store: tuple[Path, list[Block]]) -> None:
    path, _ = small_store
    (path / "images" / "c" / "2" / "0" / "0" / "0").unlink()
    problems = validate_store(path)
    assert problems == [
        "images shard 2 (images 8-10): content differs from the digest recorded at build time "
        "(missing or damaged shard file)"
    ]


def test_missing_all_zero_shard_is_not_damage(small_store: tuple[Path, list[Block]]) -> None:
    path, _ = small_store
    assert not (path / "pixel" / "object" / "c" / "1").exists()  # never written: all zeros
    assert validate_store(path) == []


def test_corrupt_label_id_is_found(small_store: tuple[Path, list[Block]]) -> None:
    path, _ = small_store
    arr = zarr.open_array(str(path / "pixel" / "object"), mode="r+")
    block = np.asarray(arr[0:4])
    block[2, 0, 1, 1] = 999
    arr[0:4] = block
    problems = validate_store(path)
    assert any("label ids [999] are not in the concept table (1..9)" in p for p in problems)
    assert any("pixel/object shard 0" in p and "digest" in p for p in problems)


def test_corrupt_source_id_is_found(small_store: tuple[Path, list[Block]]) -> None:
    path, blocks = small_store
    arr = zarr.open_array(str(path / "meta" / "source_id"), mode="r+")
    ids = np.asarray(arr[0:4])
    ids[1] = ids[0]
    arr[0:4] = ids
    problems = validate_store(path)
    assert "meta/source_id: an image id appears twice within one source" in problems


def test_incomplete_store_is_never_taken_for_a_complete_one(
    small_store: tuple[Path, list[Block]],
) -> None:
    path, _ = small_store
    g = zarr.open_group(str(path), mode="r+")
    attrs = dict(g.attrs["broden"])
    attrs["complete"] = False
    g.attrs["broden"] = attrs
    with pytest.raises(StoreError, match="incomplete.*run the same `broden build` command"):
        open_store(path)
    assert validate_store(path)[0].startswith("store is incomplete")


def test_foreign_folders_are_not_stores(tmp_path: Path) -> None:
    assert "no such store" in validate_store(tmp_path / "missing.zarr")[0]
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a Broden store"):
        open_store(tmp_path / "plain.zarr")


def test_damaged_concept_table_is_reported(small_store: tuple[Path, list[Block]]) -> None:
    path, _ = small_store
    g = zarr.open_group(str(path), mode="r+")
    table = list(g.attrs["concepts"])
    table[3] = {**table[3], "id": 40}
    g.attrs["concepts"] = table
    assert "concept ids are not 1..C in order" in validate_store(path)


# -- the bundled sample store holds what its sources say -----------------------------------


def md5_split(name: str) -> str:
    (number,) = struct.unpack(">Q", hashlib.md5(name.encode()).digest()[:8])
    return "train" if number / 2**64 <= 0.7 else "val"


def test_sample_store_images_and_labels_match_the_sources(sample_store_path: Path) -> None:
    store = open_store(sample_store_path)
    assert len(store) == 26 and store.image_size == 224 and store.label_size == 112
    by_name = {c.name: c.id for c in store.concepts}
    s = store.sample(0)
    assert s.source == "ade20k" and s.source_id.endswith("ADE_train_00016869.jpg")
    photo = Image.open(ADE_STREET / "ADE_train_00016869.jpg").convert("RGB")
    assert np.array_equal(s.image, np.asarray(photo.resize((224, 224), Image.Resampling.BILINEAR)))
    # objects: decode the seg with Pillow, sample it the zoom(order=0) way, map names to ids
    rgb = np.asarray(Image.open(ADE_STREET / "ADE_train_00016869_seg.png").convert("RGB"))
    classes = rgb[..., 0].astype(int) // 10 * 256 + rgb[..., 1]
    ann = json.loads((ADE_STREET / "ADE_train_00016869.json").read_text())["annotation"]
    name_of = {o["name_ndx"]: o["name"].split(", ")[0] for o in ann["object"]}
    rows = np.floor(np.arange(112) * (1535 / 111) + 0.5).astype(int)
    cols = np.floor(np.arange(112) * (2047 / 111) + 0.5).astype(int)
    small = classes[np.ix_(rows, cols)]
    expected = np.vectorize(lambda c: by_name[name_of[c]] if c else 0)(small)
    assert np.array_equal(s.pixel["object"][0], expected)
    assert store.concept(int(s.image_labels["scene"][0])).name == "street-s"
    assert s.split == md5_split("ade20k/ADE_train_00016869.jpg")
    # DTD: whole-image textures, the key attribute first
    dtd = next(
        i for i in range(len(store)) if store.sample(i).source_id == "dotted/dotted_0001.jpg"
    )
    labels = [store.concept(int(x)).name for x in store.sample(dtd).image_labels["texture"] if x]
    assert labels == ["dotted", "polka-dotted"]
    assert store.sample(dtd).split == md5_split("dtd/dotted_0001.jpg")


def test_sample_store_colors_are_computed_at_source_resolution(sample_store_path: Path) -> None:
    from broden.adapters.colors import COLOR_NAMES, color_table

    store = open_store(sample_store_path)
    s = store.sample(3)
    rel = s.source_id
    photo = np.asarray(Image.open(SAMPLES / "dtd" / "images" / rel).convert("RGB"))
    h, w = photo.shape[:2]
    rows = np.floor(np.arange(112) * ((h - 1) / 111) + 0.5).astype(int)
    cols = np.floor(np.arange(112) * ((w - 1) / 111) + 0.5).astype(int)
    px = photo[np.ix_(rows, cols)]
    names = np.array(COLOR_NAMES)[color_table()[px[..., 0] // 8, px[..., 1] // 8, px[..., 2] // 8]]
    got = np.array([store.concept(int(c)).name for c in s.pixel["color"][0].ravel()])
    assert np.array_equal(got.reshape(112, 112), np.char.add(names, "-c"))


def test_sample_store_validates(sample_store_path: Path, tmp_path: Path) -> None:
    assert validate_store(sample_store_path) == []
    copy = tmp_path / "copy.zarr"
    shutil.copytree(sample_store_path, copy)
    shard = next(
        p for p in (copy / "pixel" / "part").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    shard.write_bytes(shard.read_bytes()[:100])  # truncate the shard file
    problems = validate_store(copy)
    assert any(p.startswith("pixel/part shard 0") for p in problems), problems


def test_store_fingerprint_changes_with_content(
    sample_store_path: Path, small_store: tuple[Path, list[Block]]
) -> None:
    a = BrodenStore(sample_store_path).fingerprint()
    assert a == BrodenStore(sample_store_path).fingerprint()
    assert a != BrodenStore(small_store[0]).fingerprint()
