"""`broden add`: extending a built store with COCO-format sources, ids and old rows kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from broden import add, build, open_store, parse_config, validate_store
from broden.adapters.coco import COCO
from broden.build import BuildError
from broden.cli import app
from broden.config import load_config
from broden.imaging import label_grid, sample_labels
from broden.store import DIGESTS_ATTR, BrodenStore, StoreError
from tests.conftest import DATA, SAMPLES

PANOPTIC = DATA / "coco_panoptic" / "sample_data"
IMAGES = PANOPTIC / "input_images"
CAR, PILLOW, BED = 3, 90, 65  # COCO category ids of the generated instances json


def rectangle(box: tuple[float, ...], w: int, h: int) -> list[list[float]]:
    """A COCO polygon of the box (x0, y0, x1, y1), given in fractions of the image."""
    x0, y0, x1, y1 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def instances_json(path: Path) -> Path:
    """A COCO instances export over the two real COCO photos of the fixtures, with
    overlapping annotations: two cars that overlap, a pillow on a bed, and a crowd RLE."""
    images, anns = [], []
    for i, f in enumerate(sorted(IMAGES.iterdir()), 1):
        w, h = Image.open(f).size
        images.append({"id": i, "file_name": f.name, "width": w, "height": h})

        for cat, box in (
            (CAR, (0.1, 0.1, 0.5, 0.5)),
            (CAR, (0.3, 0.3, 0.7, 0.7)),  # overlaps the first car: same layer
            (BED, (0.2, 0.5, 0.9, 0.9)),
            (PILLOW, (0.4, 0.6, 0.6, 0.8)),  # on the bed: a second layer
        ):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat,
                         "segmentation": rectangle(box, w, h), "iscrowd": 0, "area": 1.0,
                         "bbox": [0, 0, 1, 1]})  # fmt: skip
        crowd = np.zeros((h, w), np.uint8, order="F")
        crowd[: h // 10, : w // 10] = 1
        rle = mask_utils.encode(np.asfortranarray(crowd))
        anns.append({"id": len(anns) + 1, "image_id": i, "category_id": PILLOW, "iscrowd": 1,
                     "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                     "area": 1.0, "bbox": [0, 0, 1, 1]})  # fmt: skip
    cats = [
        {"id": CAR, "name": "car", "supercategory": "vehicle"},
        {"id": BED, "name": "bed", "supercategory": "furniture"},
        {"id": PILLOW, "name": "pillow", "supercategory": "furniture"},
    ]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def coco_config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "min_frequency": 1,
        "min_coverage": 0.0,
        "task_size": 1,
        **extra,
        "sources": [
            {
                "adapter": "coco",
                "name": "my_coco",
                "images": str(IMAGES),
                "annotations": str(instances_json(tmp_path / "instances.json")),
            },
            {
                "adapter": "coco",
                "name": "coco_panoptic",
                "images": str(IMAGES),
                "annotations": str(PANOPTIC / "panoptic_examples.json"),
                "panoptic": str(PANOPTIC / "panoptic_examples"),
                "stuff_category": "material",
            },
        ],
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample with 8-image shards: 26 images, so its last shard holds 2."""
    cfg = load_config(SAMPLES / "broden-sample.yaml").model_copy(update={"shard_size": 8})
    out = tmp_path_factory.mktemp("base") / "base.zarr"
    build(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def extended(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("extended")
    out = tmp / "extended.zarr"
    shutil.copytree(base, out)
    add(out, parse_config(coco_config(tmp)), progress=False)
    return out


def arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    return {n: np.asarray(x[:]) for n, x in g.members(max_depth=None) if isinstance(x, zarr.Array)}


def test_old_ids_and_old_rows_are_unchanged(base: Path, extended: Path) -> None:
    old, new = open_store(base), open_store(extended)
    n_old, c_old = len(old), len(old.concepts)
    assert n_old % old.attrs.shard_size == 2  # a partly filled last shard was extended
    assert len(new) == n_old + 4  # two photos from each COCO source
    for a, b in zip(old.concepts, new.concepts[:c_old], strict=True):
        assert (a.id, a.name, a.category) == (b.id, b.name, b.category)
    before, after = arrays(base), arrays(extended)
    assert new.attrs.categories != old.attrs.categories  # material is new, object grew
    for name, x in before.items():
        y = after[name]
        assert y.shape[0] == len(new), name
        if x.ndim >= 2 and y.shape[1] > x.shape[1]:  # more layers: the old ones are kept
            assert np.array_equal(y[:n_old, : x.shape[1]], x), name
            assert not y[:n_old, x.shape[1] :].any(), name
        else:
            assert np.array_equal(y[:n_old], x), name
    assert not after["pixel/material"][:n_old].any()
    layers = {c.name: c.layers for c in new.attrs.categories}
    # car | bed over the second car | pillow over both: three layers, nothing overwritten
    assert layers["object"] == 3 > {c.name: c.layers for c in old.attrs.categories}["object"]
    assert list(after["meta/source"][n_old:]) == ["my_coco"] * 2 + ["coco_panoptic"] * 2
    assert validate_store(extended) == []


def test_new_labels_merge_by_name_or_get_new_ids(base: Path, extended: Path) -> None:
    old, new = open_store(base), open_store(extended)
    c_old = len(old.concepts)
    by_name = {c.name: c for c in new.concepts}
    # car and sky already exist: the COCO labels join them (ids kept)
    assert by_name["car"].id == {c.name: c.id for c in old.concepts}["car"]
    assert set(by_name["car"].sources) == {"ade20k", "my_coco"}
    assert "sky" in {c.name for c in old.concepts} and by_name["sky"].id <= c_old
    assert {"object", "material"} <= {s.name for s in by_name["sky"].categories}
    assert by_name["sky"].category == old.concepts[by_name["sky"].id - 1].category
    # pillow, bed and grass are new, numbered after the old ids by frequency
    for name in ("pillow", "bed", "grass"):
        assert by_name[name].id > c_old
    added = new.concepts[c_old:]
    assert [c.id for c in added] == list(range(c_old + 1, len(new.concepts) + 1))
    freqs = [c.frequency for c in added]
    assert freqs == sorted(freqs, reverse=True)
    (rec,) = new.attrs.additions
    assert rec.sources == ["my_coco", "coco_panoptic"] and rec.first_image == len(old)
    assert rec.concepts_added == len(added)
    assert by_name["car"].frequency == old.concepts[by_name["car"].id - 1].frequency + 2


def test_added_pixels_are_the_union_of_the_annotations(extended: Path, tmp_path: Path) -> None:
    """Each new image's pillow/bed/car pixels are exactly the adapter's (overlapping)
    annotations, sampled to the label grid, nothing overwritten."""
    store = open_store(extended)
    ids = {c.name: c.id for c in store.concepts}
    coco = COCO.from_config(
        {"images": str(IMAGES), "annotations": str(instances_json(tmp_path / "i.json"))}
    )
    rows = [i for i in range(len(store)) if store.sample(i).source == "my_coco"]
    for index, row in enumerate(rows):
        local = coco.load(index).pixel["object"]
        r, c = label_grid(local.shape[1:], store.label_size)
        sampled = sample_labels(local, r, c)
        got = store.sample(row).pixel["object"]
        for name, local_id in (("car", CAR), ("bed", BED), ("pillow", PILLOW)):
            want = (sampled == local_id).any(axis=0)
            have = (got == ids[name]).any(axis=0)
            assert want.any() and np.array_equal(have, want), name
        # the pillow lies on the bed: both are there, in different layers
        assert ((got == ids["pillow"]).any(0) & (got == ids["bed"]).any(0)).any()


@pytest.mark.parametrize("damaged", [False, True])
def test_an_interrupted_add_resumes_to_the_same_store(
    damaged: bool, base: Path, extended: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also when the shard recorded as written has since lost its file (``damaged``): the
    resumed add writes it again rather than trusting the record."""
    import broden.extend as extend

    out = tmp_path / "resumed.zarr"
    shutil.copytree(base, out)
    real = extend.run_add_write_task
    calls = {"n": 0}

    def dies_after_one(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if killed while writing the second shard
        return real(*args)

    monkeypatch.setattr(extend, "run_add_write_task", dies_after_one)
    cfg = parse_config(coco_config(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        add(out, cfg, progress=False)
    with pytest.raises(StoreError, match="incomplete"):
        open_store(out)
    if damaged:
        records = sorted((out.parent / "resumed.zarr.add" / "written").glob("*.json"))
        assert len(records) == 1
        name = sorted(json.loads(records[0].read_text()))[0]  # an array it rewrote
        shutil.rmtree(out / name / "c" / str(int(records[0].stem)))
    with pytest.raises(BuildError, match="incomplete"):
        build(load_config(SAMPLES / "broden-sample.yaml"), out, progress=False)
    monkeypatch.setattr(extend, "run_add_write_task", real)
    summary = add(out, cfg, progress=False)
    assert summary.reused_tasks == 4
    a, b = arrays(extended), arrays(out)
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    sa, sb = BrodenStore(extended), BrodenStore(out)
    assert sa.concepts == sb.concepts
    for name in sa.array_names():
        assert sa.array(name).attrs[DIGESTS_ATTR] == sb.array(name).attrs[DIGESTS_ATTR]
    assert not (out.parent / "resumed.zarr.add").exists()
    assert validate_store(out) == []
    # the same add again: nothing to do
    again = add(out, cfg, progress=False)
    assert again.up_to_date and len(open_store(out).attrs.additions) == 1


def test_add_refuses_what_would_change_the_store(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    shutil.copytree(base, out)
    with pytest.raises(BuildError, match="image_size: 128 but .* was built with 224"):
        add(out, parse_config(coco_config(tmp_path, image_size=128)), progress=False)
    clash = coco_config(tmp_path)
    clash["sources"][0]["name"] = "dtd"
    with pytest.raises(BuildError, match="already has a source named 'dtd'"):
        add(out, parse_config(clash), progress=False)
    with pytest.raises(StoreError, match="no such store"):
        add(tmp_path / "nothing.zarr", parse_config(coco_config(tmp_path)), progress=False)
    assert validate_store(out) == []  # refused before touching it
    assert not (tmp_path / "s.zarr.add").exists() or not any((tmp_path / "s.zarr.add").iterdir())


def test_cli_add_diff_and_concept_sets(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    shutil.copytree(base, out)
    cfg = tmp_path / "coco.json"
    cfg.write_text(json.dumps(coco_config(tmp_path)))
    runner = CliRunner()
    r = runner.invoke(app, ["add", str(out), str(cfg), "--backup", "-q"])
    assert r.exit_code == 0, r.output
    assert "added: 4 images from my_coco, coco_panoptic" in r.output
    orig = tmp_path / "s.zarr.orig"  # --backup: the store as it was before the add
    assert open_store(orig).concepts == open_store(base).concepts and len(open_store(orig)) == 26
    again = runner.invoke(app, ["add", str(out), str(cfg), "--backup", "-q"])
    assert again.exit_code == 0 and "nothing to do" in again.output  # applied: no new copy
    info = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)
    assert [a["sources"] for a in info["additions"]] == [["my_coco", "coco_panoptic"]]
    assert info["adding"] is None and info["in_progress"] is None

    r = runner.invoke(app, ["concepts", "--diff", str(orig), str(out), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    old, new = open_store(base), open_store(out)
    assert d["ids_stable"] and d["removed"] == [] and d["renamed"] == []
    assert [c["id"] for c in d["added"]] == [c.id for c in new.concepts[len(old.concepts) :]]
    assert "car" in {c["name"] for c in d["grown"]}
    assert d["unchanged"] + len(d["grown"]) == len(old.concepts)
    r = runner.invoke(app, ["concepts", "--diff", str(base), str(out)])
    assert "old concept ids are stable" in r.output and "+ " in r.output

    # a concept set of the old store's concepts, written and read back on the new store
    set_file = tmp_path / "old.csv"
    r = runner.invoke(app, ["concepts", str(base), "--write-set", str(set_file)])
    assert r.exit_code == 0 and f"{len(old.concepts)} concepts" in r.output
    from broden.concept_set import ConceptSetError, fingerprint, resolve

    cats = [c.name for c in new.categories]
    assert resolve(new.concepts, cats, [str(set_file)]) == [c.id for c in old.concepts]
    assert fingerprint(new.concepts[: len(old.concepts)]) == fingerprint(old.concepts)
    coco_ids = resolve(new.concepts, cats, ["source:my_coco"])
    assert {new.concepts[i - 1].name for i in coco_ids} == {"car", "bed", "pillow"} | {
        c.name for c in new.concepts if "my_coco" in c.sources
    }
    r = runner.invoke(app, ["concepts", str(out), "--source", "my_coco", "--json"])
    assert [c["id"] for c in json.loads(r.output)] == coco_ids
    # a set from another numbering is refused, not silently remapped
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n1,pillow\n")
    with pytest.raises(ConceptSetError, match="concept 1 is 'pillow' in the set but id 1 names"):
        resolve(new.concepts, cats, [str(bad)])


def test_an_add_on_a_dask_cluster_equals_the_in_process_add(
    base: Path, extended: Path, tmp_path: Path
) -> None:
    pytest.importorskip("dask.distributed")
    out = tmp_path / "dask.zarr"
    shutil.copytree(base, out)
    add(out, parse_config(coco_config(tmp_path)), progress=False, dask="local:2")
    a, b = arrays(extended), arrays(out)
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert BrodenStore(extended).concepts == BrodenStore(out).concepts
