"""Stores read with xarray: every array records its dimension names, a complete store holds
consolidated metadata (absent while a build or add is unfinished, current after an add),
and a store of an earlier broden opens in broden and is upgraded in place."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from broden import add, parse_config
from broden.cli import app
from broden.schema import CategorySpec
from broden.store import (
    BrodenStore,
    StoreError,
    StoreWriter,
    dimension_names,
    merge_digests,
    open_store,
    upgrade_hint,
    upgrade_store,
    validate_store,
)
from broden.store.metadata import CONSOLIDATED, consolidated_differences
from tests.store_helpers import write_store
from tests.test_extend import coco_config
from tests.test_store import CATS, S, concepts, random_blocks
from tests.test_store_writer import attrs

xr = pytest.importorskip("xarray")


@contextmanager
def no_warnings() -> Iterator[None]:
    """xarray opens the store without a warning (a missing consolidation is one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def root_doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((path / "zarr.json").read_text())
    return doc


def has_consolidated(path: Path) -> bool:
    return root_doc(path).get(CONSOLIDATED) is not None


def small(path: Path) -> Path:
    write_store(path, random_blocks(np.random.default_rng(0), [4, 4, 3], 9), CATS, concepts(9),
                S, shard=4)  # fmt: skip
    return path


def make_old_style(path: Path) -> None:
    """Strip what this broden adds, as a store of the previous version was written."""
    for doc_path in path.rglob("zarr.json"):
        doc = json.loads(doc_path.read_text())
        doc.pop("dimension_names", None)
        doc.pop(CONSOLIDATED, None)
        doc_path.write_text(json.dumps(doc, indent=2))


def data_files(path: Path) -> dict[str, str]:
    """Every chunk file (all but the metadata documents) → a hash of its bytes."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


def test_dimension_names_follow_the_layout() -> None:
    assert dimension_names("images") == ("image", "y", "x", "rgb")
    assert dimension_names("pixel/object") == ("image", "object_layer", "label_y", "label_x")
    assert dimension_names(CategorySpec(name="scene", kind="image", layers=1)) == (
        "image", "scene_slot",
    )  # fmt: skip
    assert dimension_names("part", "pixel") == dimension_names("pixel/part")
    for name in ("meta/source", "meta/source_id", "meta/split"):
        assert dimension_names(name) == ("image",)
    assert dimension_names("meta/orig_size") == ("image", "hw")
    with pytest.raises(ValueError, match="not an array of the store layout"):
        dimension_names("meta/other")


def test_every_array_records_its_dimension_names(sample_store_path: Path) -> None:
    store = open_store(sample_store_path)
    for name in store.array_names():
        arr = zarr.open_array(str(sample_store_path / name), mode="r")
        assert arr.metadata.dimension_names == dimension_names(name), name  # type: ignore[union-attr]
        assert len(dimension_names(name)) == arr.ndim


def test_xarray_reads_the_sample_store_as_broden_does(sample_store_path: Path) -> None:
    store = open_store(sample_store_path)
    N, S_, L = len(store), store.image_size, store.label_size
    with no_warnings():
        root = xr.open_zarr(sample_store_path)
        pixel = xr.open_zarr(sample_store_path, group="pixel")
        image = xr.open_zarr(sample_store_path, group="image")
        meta = xr.open_zarr(sample_store_path, group="meta")
    assert root.images.dims == ("image", "y", "x", "rgb")
    assert dict(root.sizes) == {"image": N, "y": S_, "x": S_, "rgb": 3}
    assert root.attrs["broden"]["complete"] is True  # the large JSON attributes come along
    assert [c["name"] for c in root.attrs["concepts"]] == [c.name for c in store.concepts]
    for i in (0, 3, N - 1):
        assert np.array_equal(root.images[i].values, store.image(i))
        pix, img = store.labels(i)
        for c, labels in pix.items():
            assert np.array_equal(pixel[c][i].values, labels), c
        for c, labels in img.items():
            assert np.array_equal(image[c][i].values, labels), c
    for c in store.categories:
        ds = pixel if c.kind == "pixel" else image
        assert ds[c.name].dims == dimension_names(c)
        assert ds[c.name].shape == store.array(f"{c.kind}/{c.name}").shape
    assert set(pixel.data_vars) == {c.name for c in store.categories if c.kind == "pixel"}
    assert pixel.sizes["label_y"] == pixel.sizes["label_x"] == L
    assert pixel.sizes["object_layer"] == store.category("object").layers
    assert pixel.sizes["part_layer"] == store.category("part").layers == 2
    assert image.sizes["texture_slot"] == store.category("texture").layers
    assert meta.source.dims == ("image",) and meta.orig_size.dims == ("image", "hw")
    for name in ("source", "source_id", "split"):
        assert [str(s) for s in meta[name].values] == [str(s) for s in store.meta(name)], name
    assert np.array_equal(meta.orig_size.values, store.meta("orig_size"))
    with no_warnings():
        tree = xr.open_datatree(sample_store_path, engine="zarr")
    assert set(tree.children) == {"pixel", "image", "meta"}
    assert np.array_equal(tree["pixel"]["object"][5].values, store.labels(5)[0]["object"])


def test_complete_stores_hold_current_consolidated_metadata(
    sample_store_path: Path, tmp_path: Path
) -> None:
    assert has_consolidated(sample_store_path)
    assert consolidated_differences(sample_store_path) == []
    path = small(tmp_path / "s.zarr")
    assert consolidated_differences(path) == [] and validate_store(path) == []
    assert upgrade_hint(path) is None and upgrade_store(path) == []


def test_an_unfinished_store_has_no_consolidated_metadata(tmp_path: Path) -> None:
    blocks = random_blocks(np.random.default_rng(1), [4, 3], 9)
    writer = StoreWriter.begin(tmp_path / "s.zarr", attrs(7, 4), concepts(9))
    writer.write_shard(0, blocks[0])  # ... and killed
    assert not has_consolidated(writer.path)
    with pytest.raises(StoreError, match="incomplete"):
        open_store(writer.path)
    assert validate_store(writer.path)[0].startswith("store is incomplete")
    with pytest.raises(StoreError, match="incomplete.*nothing to upgrade"):
        upgrade_store(writer.path)
    # a complete store begun again (a rebuild) loses its copy before anything changes
    done = small(tmp_path / "done.zarr")
    assert has_consolidated(done)
    StoreWriter.begin(done, attrs(11, 4), concepts(9))
    assert not has_consolidated(done)
    assert "store is incomplete" in validate_store(done)[0]


def test_consolidation_is_the_last_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import broden.store.writer as writer_module

    def killed(path: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writer_module, "consolidate", killed)
    blocks = random_blocks(np.random.default_rng(2), [4, 3], 9)
    writer = StoreWriter.begin(tmp_path / "s.zarr", attrs(7, 4), concepts(9))
    digests = merge_digests(writer.write_shard(j, b) for j, b in enumerate(blocks))
    with pytest.raises(KeyboardInterrupt):
        writer.finish(attrs(7, 4), digests)
    # complete, all there, no copy yet: broden reads it, validate passes, upgrade finishes it
    assert open_store(writer.path).attrs.complete and not has_consolidated(writer.path)
    assert validate_store(writer.path) == []
    hint = upgrade_hint(writer.path)
    assert hint is not None and "no consolidated metadata" in hint
    monkeypatch.undo()
    assert upgrade_store(writer.path) == ["consolidated metadata written"]
    with no_warnings():
        assert xr.open_zarr(writer.path).sizes["image"] == 7


def test_broden_reads_live_metadata_and_validate_finds_a_stale_copy(tmp_path: Path) -> None:
    path = small(tmp_path / "s.zarr")
    # another writer grows an array behind broden's back, leaving the copy stale
    arr = zarr.open_array(str(path / "meta" / "orig_size"), mode="r+")
    arr.resize((12, 2))
    assert zarr.open_group(str(path), mode="r")["meta/orig_size"].shape == (11, 2)  # the copy
    assert open_store(path).array("meta/orig_size").shape == (12, 2)  # broden: live
    problems = validate_store(path, check_data=False)
    assert any("consolidated metadata is stale for meta/orig_size" in p for p in problems)
    assert any("meta/orig_size: expected int32 (11, 2), found int32 (12, 2)" in p for p in problems)


def test_the_consolidated_metadata_follows_an_add(
    sample_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import broden.extend as extend

    out = tmp_path / "s.zarr"
    shutil.copytree(sample_store_path, out)
    n_old = len(open_store(out))
    cfg = parse_config(coco_config(tmp_path))
    real = extend.run_add_write_task

    def killed(*args: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(extend, "run_add_write_task", killed)
    with pytest.raises(KeyboardInterrupt):  # killed after the store was marked and grown
        add(out, cfg, progress=False)
    assert not has_consolidated(out)
    with pytest.raises(StoreError, match="incomplete"):
        open_store(out)
    monkeypatch.setattr(extend, "run_add_write_task", real)
    add(out, cfg, progress=False)
    store = open_store(out)
    assert len(store) == n_old + 4 and consolidated_differences(out) == []
    with no_warnings():
        root = xr.open_zarr(out)
        pixel = xr.open_zarr(out, group="pixel")
        meta = xr.open_zarr(out, group="meta")
    assert root.sizes["image"] == n_old + 4
    assert pixel.sizes["object_layer"] == store.category("object").layers == 3  # grew
    assert pixel.material.dims == ("image", "material_layer", "label_y", "label_x")  # new
    assert [str(s) for s in meta.source.values[n_old:]] == ["my_coco"] * 2 + ["coco_panoptic"] * 2
    for i in (0, n_old, n_old + 3):
        assert np.array_equal(root.images[i].values, store.image(i))
        assert np.array_equal(pixel.object[i].values, store.labels(i)[0]["object"])
    assert validate_store(out) == []


def test_an_old_store_opens_validates_and_upgrades(tmp_path: Path) -> None:
    path = small(tmp_path / "old.zarr")
    make_old_style(path)
    assert not has_consolidated(path)
    old = BrodenStore(path)
    files, fingerprint = data_files(path), old.fingerprint()
    digests = {n: old.array(n).attrs["shard_digests"] for n in old.array_names()}
    assert validate_store(path) == []  # valid: only the xarray extras are missing
    hint = upgrade_hint(path)
    assert hint is not None and f"`broden upgrade {path}`" in hint and "7 arrays" in hint
    with pytest.raises(KeyError, match="dimension_names"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xarray's missing-consolidation warning
        xr.open_zarr(path)

    changes = upgrade_store(path)
    assert changes == [
        "images: dimension names (image, y, x, rgb)",
        "pixel/object: dimension names (image, object_layer, label_y, label_x)",
        "image/scene: dimension names (image, scene_slot)",
        "meta/source: dimension names (image)",
        "meta/source_id: dimension names (image)",
        "meta/split: dimension names (image)",
        "meta/orig_size: dimension names (image, hw)",
        "consolidated metadata written",
    ]
    assert data_files(path) == files  # metadata only
    store = BrodenStore(path)
    assert store.fingerprint() == fingerprint
    assert {n: store.array(n).attrs["shard_digests"] for n in store.array_names()} == digests
    assert validate_store(path) == [] and upgrade_hint(path) is None
    assert upgrade_store(path) == []  # again: nothing to do
    with no_warnings():
        root = xr.open_zarr(path)
        pixel = xr.open_zarr(path, group="pixel")
        image = xr.open_zarr(path, group="image")
    assert root.images.dims == ("image", "y", "x", "rgb") and root.sizes["image"] == 11
    assert pixel.object.dims == ("image", "object_layer", "label_y", "label_x")
    for i in (0, 5, 10):
        assert np.array_equal(root.images[i].values, store.image(i))
        assert np.array_equal(pixel.object[i].values, store.labels(i)[0]["object"])
        assert np.array_equal(image.scene[i].values, store.labels(i)[1]["scene"])


def test_an_add_to_an_old_store_names_the_kept_arrays(
    sample_store_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "old.zarr"
    shutil.copytree(sample_store_path, out)
    make_old_style(out)
    add(out, parse_config(coco_config(tmp_path)), progress=False)
    store = open_store(out)
    for name in store.array_names():
        arr = zarr.open_array(str(out / name), mode="r")
        assert arr.metadata.dimension_names == dimension_names(name), name  # type: ignore[union-attr]
    assert upgrade_hint(out) is None
    with no_warnings():
        assert xr.open_zarr(out, group="image").scene.dims == ("image", "scene_slot")


def test_cli_upgrade(tmp_path: Path) -> None:
    runner = CliRunner()
    path = small(tmp_path / "old.zarr")
    make_old_style(path)
    res = runner.invoke(app, ["upgrade", str(path)])
    assert res.exit_code == 0, res.output
    assert "  images: dimension names (image, y, x, rgb)" in res.output
    assert res.output.rstrip().endswith(f"{path}: upgraded (8 changes)")
    again = runner.invoke(app, ["upgrade", str(path)])
    assert again.exit_code == 0 and again.output.strip() == f"{path}: up to date"
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 0

    unfinished = StoreWriter.begin(tmp_path / "u.zarr", attrs(7, 4), concepts(9)).path
    res = runner.invoke(app, ["upgrade", str(unfinished)])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "incomplete" in lines[0]
    res = runner.invoke(app, ["upgrade", str(tmp_path / "missing.zarr")])
    assert res.exit_code == 2 and "no such store" in res.output
