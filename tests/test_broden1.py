"""The shipped broden1 configuration on a five-source mini-Broden.

BRODEN_DATA is assembled from the bundled real files (ADE20K 2021 sample, Pascal-Part
annotations with their VOC images, the DTD-format sample) and data generated in the
sources' exact formats (Pascal-Context LabelMaps, an OpenSurfaces release folder), so
that the broden1 thresholds (10 images, 0.5 image-equivalents) leave some names in and
drop others. Checked on the built store: a name shared by two sources is one concept, a
name shared by two categories is one concept, a blacklisted synonym does not merge, a
label under the thresholds is dropped and its pixels become 0, ids follow frequency.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from broden.build import build
from broden.config import ConfigError, load_config
from broden.store import BrodenStore, open_store
from tests.conftest import ADE_ROOT, ADE_STREET, DATA, SAMPLES, load_make_dtd

REPO = SAMPLES.parent
PASCAL = DATA / "pascal_part"
OS_FIXTURE = DATA / "opensurfaces" / "shapesubstance.json"


def context_ids() -> dict[str, int]:
    out = {}
    for line in (DATA / "pascal_context" / "labels.txt").read_text().splitlines():
        n, name = line.split(": ")
        out[name] = int(n)
    return out


def write_pascal_context(ctx: Path, image_ids: list[str]) -> None:
    """LabelMaps: the Pascal-Part instances with their class, a 'car' block and a
    'machine' block in the first ten images, 'cloth' in three, sky above, grass below."""
    ids = context_ids()
    (ctx / "trainval").mkdir(parents=True)
    shutil.copy(DATA / "pascal_context" / "labels.txt", ctx / "labels.txt")
    for k, image_id in enumerate(image_ids):
        anno = scipy.io.loadmat(PASCAL / "Annotations_Part" / f"{image_id}.mat")["anno"][0, 0]
        objects = anno["objects"]
        h, w = objects[0, 0]["mask"].shape
        label = np.full((h, w), ids["grass"], np.uint16)
        label[: h // 2] = ids["sky"]
        for i in range(objects.shape[1]):
            cls = str(objects[0, i]["class"][0])
            label[objects[0, i]["mask"].astype(bool)] = ids[cls]
        if k < 10:  # blocks drawn over everything, each 1/9 of the image
            label[: h // 3, : w // 3] = ids["car"]
            label[h - h // 3 :, w - w // 3 :] = ids["machine"]
        if k < 3:
            label[h // 3 : h // 2, : w // 5] = ids["cloth"]
        scipy.io.savemat(ctx / "trainval" / f"{image_id}.mat", {"LabelMap": label})


def write_opensurfaces(root: Path, n: int = 12) -> None:
    """A release folder: photos, R-channel label PNGs, the substance table as the release
    script builds it (fail entries dropped, sorted by name, numbered from 1)."""
    items = json.loads(OS_FIXTURE.read_text())
    kept = sorted(p["fields"]["name"] for p in items if not p["fields"].get("fail"))
    red = {name: i + 1 for i, name in enumerate(kept)}
    (root / "photos").mkdir(parents=True)
    (root / "photos-labels").mkdir()
    with open(root / "label-substance-colors.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("substance_id", "substance_name", "red_color"))
        w.writerows((i, name, red[name]) for i, name in enumerate(kept, 1))
    rng = np.random.default_rng(7)
    with open(root / "photos.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("photo_id", "scene_category_name", "scene_category_score"))
        for k in range(n):
            pid = str(1000 + k)
            w.writerow((pid, "kitchen", 0.9))
            photo = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
            Image.fromarray(photo).save(root / "photos" / f"{pid}.jpg", quality=92)
            lab = np.zeros((64, 96, 3), np.uint8)
            lab[:32, :, 0] = red["Fabric/cloth"]
            lab[32:, :48, 0] = red["Paper/tissue"]
            lab[32:, 48:, 0] = red["Wood"]
            if k == 0:
                lab[60:, 90:, 0] = red["Granite/marble"]  # one image, a few pixels: dropped
            Image.fromarray(lab).save(root / "photos-labels" / f"{pid}.png")


def replicate_ade(src: Path, dst: Path, copies: int) -> None:
    """The ADE20K sample with every image present ``copies`` times (symlinked files), so
    that its labels are frequent enough for Broden's thresholds."""
    street = Path("images/ADE/training/urban/street")
    (dst / street).mkdir(parents=True)
    for number, image_id in enumerate(["ADE_train_00016869", "ADE_train_00016900"]):
        for k in range(copies):
            new_id = f"ADE_train_{90000 + number * 100 + k:08d}"
            for f in (src / street).glob(f"{image_id}[._]*"):
                (dst / street / f.name.replace(image_id, new_id)).symlink_to(f)


def make_sources(data: Path) -> Path:
    """A ``$BRODEN_DATA`` folder of the five sources, in their real formats (see the module
    docstring), at ``data``."""
    replicate_ade(ADE_ROOT, data / "ade20k" / "ADE20K_2016_07_26", copies=6)
    load_make_dtd().main(data / "dtd" / "dtd", per_class=10)
    write_opensurfaces(data / "opensurfaces")
    shutil.copytree(PASCAL / "VOCdevkit", data / "pascal" / "VOCdevkit")
    shutil.copytree(PASCAL / "Annotations_Part", data / "pascal" / "part" / "Annotations_Part")
    image_ids = sorted(p.stem for p in (PASCAL / "Annotations_Part").glob("*.mat"))
    write_pascal_context(data / "pascal" / "context", image_ids)
    return data


@pytest.fixture(scope="module")
def broden1(tmp_path_factory: pytest.TempPathFactory) -> BrodenStore:
    data = make_sources(tmp_path_factory.mktemp("sources"))
    os.environ["BRODEN_DATA"] = str(data)
    try:
        cfg = load_config(REPO / "configs" / "broden1.yaml")
    finally:
        del os.environ["BRODEN_DATA"]
    out = tmp_path_factory.mktemp("broden1") / "broden1.zarr"
    # the replicated ADE20K images are links to the fixture, outside the source's folder
    cfg = cfg.model_copy(update={"allow_outside_links": True})
    build(cfg, out, workers=2, progress=False)
    return open_store(out)


def concept(store: BrodenStore, name: str):  # type: ignore[no-untyped-def]
    return next((c for c in store.concepts if c.name == name), None)


def test_the_shipped_config_has_brodens_settings() -> None:
    os.environ["BRODEN_DATA"] = "/data"
    try:
        cfg = load_config(REPO / "configs" / "broden1.yaml")
    finally:
        del os.environ["BRODEN_DATA"]
    assert (cfg.image_size, cfg.min_frequency, cfg.min_coverage) == (224, 10, 0.5)
    assert [s.source_name for s in cfg.sources] == ["ade20k", "dtd", "opensurfaces", "pascal"]
    assert cfg.suffixes == {"scene": "-s", "color": "-c"} and cfg.colors and cfg.synonyms
    assert cfg.sources[2].categories == ["material"]
    assert cfg.sources[0].adapter_options()["root"] == "/data/ade20k/ADE20K_2016_07_26"


def test_unset_data_variable_is_a_clear_error() -> None:
    os.environ.pop("BRODEN_DATA", None)
    with pytest.raises(ConfigError, match="environment variable BRODEN_DATA is not set"):
        load_config(REPO / "configs" / "broden1.yaml")


def test_all_five_sources_arrive(broden1: BrodenStore) -> None:
    per_source = {s.name: s.images for s in broden1.attrs.sources}
    assert per_source == {"ade20k": 12, "dtd": 60, "opensurfaces": 12, "pascal": 12}
    assert [c.name for c in broden1.categories] == [
        "color", "texture", "material", "part", "object", "scene",
    ]  # fmt: skip


def test_a_name_shared_by_two_sources_is_one_concept(broden1: BrodenStore) -> None:
    # ADE20K's car (12 images) claims "car" first; Pascal-Context's car (10) merges into it
    car = concept(broden1, "car")
    assert car is not None and car.sources == ["ade20k", "pascal"]
    assert car.frequency == 22 and car.categories[0].name == "object"
    assert {"auto", "automobile", "motorcar"} <= set(car.synonyms)
    sky = concept(broden1, "sky")
    assert sky is not None and sky.sources == ["ade20k", "pascal"] and sky.frequency == 24


def test_a_name_shared_by_two_categories_is_one_concept(broden1: BrodenStore) -> None:
    # OpenSurfaces "Fabric/cloth" (material) claims "cloth"; Pascal-Context's "cloth"
    # objects merge into it: fabric is material(12);object(3), like broden1's fabric row
    fabric = concept(broden1, "fabric")
    assert fabric is not None and concept(broden1, "cloth") is None
    assert [(c.name, c.frequency) for c in fabric.categories] == [("material", 12), ("object", 3)]
    assert fabric.category == "material" and fabric.sources == ["opensurfaces", "pascal"]


def test_a_blacklisted_synonym_does_not_merge(broden1: BrodenStore) -> None:
    # ADE's car is "car, auto, automobile, machine, motorcar" and more frequent than
    # Pascal-Context's "machine": without the blacklist it would claim "machine" and absorb
    # it; Broden never calls a car a machine, so "machine" is a concept of its own
    machine, car = concept(broden1, "machine"), concept(broden1, "car")
    assert machine is not None and machine.sources == ["pascal"]
    assert "machine" not in car.synonyms
    # and "paper/tissue" keeps only "paper"
    assert concept(broden1, "paper") is not None and concept(broden1, "tissue") is None


def test_labels_under_the_thresholds_are_dropped_and_zeroed(broden1: BrodenStore) -> None:
    # the umbrella is in one of the two ADE images (6 copies): under 10 images
    names = {c.name for c in broden1.concepts}
    assert "umbrella" not in names and "granite" not in names and "street-s" in names
    dropped = {d.name: d for d in broden1.attrs.build_report.dropped}
    assert dropped["umbrella"].frequency == 6 and dropped["granite"].frequency == 1
    # the umbrella's pixels are 0 in the object layer of its ADE image
    rgb = np.asarray(Image.open(ADE_STREET / "ADE_train_00016900_seg.png").convert("RGB"))
    classes = rgb[..., 0].astype(int) // 10 * 256 + rgb[..., 1]
    rows = np.floor(np.arange(112) * (1649 / 111) + 0.5).astype(int)
    cols = np.floor(np.arange(112) * (2199 / 111) + 0.5).astype(int)
    umbrella = classes[np.ix_(rows, cols)] == 2901
    index = [str(s) for s in broden1.meta("source_id")].index(
        "images/ADE/training/urban/street/ADE_train_00090100.jpg"  # a copy of 16900
    )
    objects = broden1.sample(index).pixel["object"][0]
    assert umbrella.any() and (objects[umbrella] == 0).all()
    assert (objects[~umbrella & (classes[np.ix_(rows, cols)] > 0)] > 0).mean() > 0.9


def test_ids_follow_frequency_then_coverage(broden1: BrodenStore) -> None:
    keys = [(-c.frequency, -c.coverage) for c in broden1.concepts]
    assert keys == sorted(keys) and len(set(keys)) > 10
    assert all(c.frequency >= 10 and c.coverage >= 0.5 for c in broden1.concepts)
    assert broden1.concepts[0].name.endswith("-c")  # colors are everywhere: the first ids


def test_pascal_parts_keep_their_objects(broden1: BrodenStore) -> None:
    head = concept(broden1, "head")
    assert head is not None and head.category == "part" and head.sources == ["pascal"]
    parents = {broden1.concept(e.id).name for e in head.part_of}
    assert parents == {"person"}  # cats, dogs, birds are under the thresholds here
