"""The opensurfaces adapter on a release folder generated here the way
``process_opensurfaces_release_0.py`` writes it, from the real category fixtures
(tests/data/opensurfaces/*.json, see its PROVENANCE.md)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from broden.adapters import Adapter, SampleError, SourceError
from broden.adapters.opensurfaces import OpenSurfaces, split_names
from broden.adapters.testing import AdapterContract

DATA = Path(__file__).parent / "data" / "opensurfaces"


def color_table(fixture: str) -> list[tuple[int, str, int]]:
    """(pk, name, color) as the release script numbers them: fail entries dropped,
    sorted by name, colors from 1."""
    items = json.loads((DATA / fixture).read_text())
    kept = sorted(
        ((p["pk"], p["fields"]["name"]) for p in items if not p["fields"].get("fail")),
        key=lambda x: x[1],
    )
    return [(pk, name, i + 1) for i, (pk, name) in enumerate(kept)]


SUBSTANCES = color_table("shapesubstance.json")
NAMES = color_table("shapename.json")
SCENES = color_table("photoscenecategory.json")
RED = {name: color for _, name, color in SUBSTANCES}
GREEN = {name: color for _, name, color in NAMES}
BLUE = {name: color for _, name, color in SCENES}

# photo id -> (photo W×H, label W×H, scene name as photos.csv writes it)
PHOTOS = {
    "101": ((60, 40), (60, 40), "kitchen"),
    "102": ((120, 80), (60, 40), ""),  # no scene (None); label rendered at half size
    "103": ((40, 60), (40, 60), "living room"),
}


def label_image(label_size: tuple[int, int], scene: str) -> np.ndarray:
    """An RGB label image: R materials, G objects, B the scene, in three bands."""
    w, h = label_size
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, :, 2] = BLUE.get(scene, 0)
    rgb[: h // 4, :, :2] = (RED["Brick"], GREEN["Wall"])
    rgb[h // 4 : h // 2, : w // 2, :2] = (RED["Paper/tissue"], GREEN["Book"])
    rgb[h // 2 :, w // 3 :, :2] = (RED["Wood - painted"], GREEN["Cabinet/cupboard"])
    return rgb


def write_release(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for filename, header, rows in (
        ("label-substance-colors.csv", ("substance_id", "substance_name", "red_color"), SUBSTANCES),
        ("label-name-colors.csv", ("name_id", "name_name", "green_color"), NAMES),
        ("label-scene-colors.csv", ("scene_category_id", "scene_category_name", "blue_color"),
         SCENES),
    ):  # fmt: skip
        with open(root / filename, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
    (root / "photos").mkdir()
    (root / "photos-labels").mkdir()
    rng = np.random.default_rng(0)
    with open(root / "photos.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ("photo_id", "scene_category_name", "scene_category_score", "whitebalanced",
             "whitebalanced_score", "fov", "flickr_url", "license_name",
             "license_is_creative_commons")
        )  # fmt: skip
        for pid, ((w, h), label_size, scene) in PHOTOS.items():
            writer.writerow((pid, scene, 0.9, True, 0.8, 60.0, "", "Attribution License", True))
            photo = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(photo).save(root / "photos" / f"{pid}.jpg", quality=95)
            Image.fromarray(label_image(label_size, scene)).save(
                root / "photos-labels" / f"{pid}.png"
            )
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_release(tmp_path_factory.mktemp("os") / "opensurfaces")


def make(root: Path, categories: list[str] | None = None) -> OpenSurfaces:
    adapter = OpenSurfaces.from_config({"root": root}, categories)
    adapter.check()
    assert isinstance(adapter, OpenSurfaces)
    return adapter


def test_default_category_is_material_as_in_broden(release: Path) -> None:
    adapter = make(release)
    assert adapter.categories == ("material",)
    assert set(adapter.vocabulary()) == {"material"}


def test_samples_are_photos_csv_rows_in_file_order(release: Path) -> None:
    adapter = make(release)
    assert [adapter.source_id(i) for i in range(len(adapter))] == [
        "photos/101.jpg", "photos/102.jpg", "photos/103.jpg",
    ]  # fmt: skip


def test_material_names_are_split_on_slash_and_normalised(release: Path) -> None:
    vocab = make(release).vocabulary()["material"]
    assert len(vocab) == 45  # 48 substances, 3 of them "fail" entries
    assert vocab[1] == ["brick"]  # sorted by name, numbered from 1
    assert vocab[RED["Paper/tissue"]] == ["paper", "tissue"]
    assert vocab[RED["Plastic - clear"]] == ["plastic-clear"]
    assert vocab[RED["Paper towel/tissue"]] == ["paper towel", "tissue"]
    assert split_names("Mat/rug - removable") == ["mat", "rug-removable"]


@pytest.mark.parametrize("pid", ["101", "103"])
def test_material_pixels_are_the_red_channel(release: Path, pid: str) -> None:
    adapter = make(release)
    index = list(PHOTOS).index(pid)
    sample = adapter.load(index)
    sample.validate()
    red = np.asarray(Image.open(release / "photos-labels" / f"{pid}.png"))[..., 0]
    assert np.array_equal(sample.pixel["material"][0], red)
    vocab = adapter.vocabulary()["material"]
    values, counts = np.unique(sample.pixel["material"], return_counts=True)
    named = {vocab[int(v)][0]: int(c) for v, c in zip(values, counts, strict=True) if v}
    w, h = PHOTOS[pid][1]
    assert named == {
        "brick": (h // 4) * w,
        "paper": (h // 2 - h // 4) * (w // 2),
        "wood-painted": (h - h // 2) * (w - w // 3),
    }


def test_label_image_rendered_smaller_is_resampled_to_the_photo(release: Path) -> None:
    adapter = make(release)
    sample = adapter.load(list(PHOTOS).index("102"))  # photo 120×80, labels 60×40
    assert sample.image.shape == (80, 120, 3)
    material = sample.pixel["material"][0]
    assert material.shape == (80, 120)
    red = np.asarray(Image.open(release / "photos-labels" / "102.png"))[..., 0]
    assert np.array_equal(material, np.repeat(np.repeat(red, 2, axis=0), 2, axis=1))


def test_objects_and_scenes_when_asked(release: Path) -> None:
    adapter = make(release, ["material", "object", "scene"])
    vocab = adapter.vocabulary()
    assert vocab["object"][GREEN["Cabinet/cupboard"]] == ["cabinet", "cupboard"]
    assert vocab["scene"] == {1: ["kitchen"], 2: ["living room"]}
    first = adapter.load(0)
    green = np.asarray(Image.open(release / "photos-labels" / "101.png"))[..., 1]
    assert np.array_equal(first.pixel["object"][0], green)
    assert first.image_labels["scene"] == [1]
    assert "scene" not in adapter.load(1).image_labels  # empty scene_category_name
    assert adapter.load(2).image_labels["scene"] == [2]


def test_tilde_scenes_are_unlabeled(tmp_path: Path) -> None:
    root = write_release(tmp_path / "os")
    text = (root / "photos.csv").read_text().replace("kitchen", "~Not on list")
    (root / "photos.csv").write_text(text)
    adapter = make(root, ["scene"])
    assert adapter.vocabulary()["scene"] == {1: ["living room"]}
    assert "scene" not in adapter.load(0).image_labels


def test_red_value_missing_from_the_table_is_a_sample_error(tmp_path: Path) -> None:
    root = write_release(tmp_path / "os")
    png = root / "photos-labels" / "101.png"
    rgb = np.asarray(Image.open(png)).copy()
    rgb[0, 0, 0] = 200
    Image.fromarray(rgb).save(png)
    adapter = make(root)
    with pytest.raises(
        SampleError, match=r"101\.png: R channel \(material\) values \[200\] are not in "
    ):
        adapter.load(0)
    adapter.load(1)


def test_label_image_of_another_aspect_ratio_is_a_sample_error(tmp_path: Path) -> None:
    root = write_release(tmp_path / "os")
    Image.fromarray(label_image((40, 40), "")).save(root / "photos-labels" / "101.png")
    with pytest.raises(
        SampleError, match=r"101\.png: label image is 40×40 .* photo 101\.jpg is 60×40"
    ):
        make(root).load(0)


@pytest.mark.parametrize(
    ("missing", "categories"),
    [
        ("label-substance-colors.csv", None),
        ("photos.csv", None),
        ("label-name-colors.csv", ["object"]),
    ],
)
def test_missing_csv_is_a_source_error_at_check(
    tmp_path: Path, missing: str, categories: list[str] | None
) -> None:
    root = write_release(tmp_path / "os")
    (root / missing).unlink()
    adapter = OpenSurfaces.from_config({"root": root}, categories)
    with pytest.raises(SourceError, match=missing.replace(".", r"\.")):
        adapter.check()


def test_missing_label_png_is_a_sample_error(tmp_path: Path) -> None:
    root = write_release(tmp_path / "os")
    (root / "photos-labels" / "103.png").unlink()
    with pytest.raises(SampleError, match=r"103\.png: file is missing"):
        make(root).load(2)


def test_build_stores_opensurfaces_materials(tmp_path: Path, release: Path) -> None:
    from broden.build import build
    from broden.config import parse_config
    from broden.store import open_store

    config = parse_config(
        {
            "image_size": 32,
            "min_frequency": 1,
            "min_coverage": 0.0,
            "colors": False,
            "sources": [{"adapter": "opensurfaces", "root": str(release)}],
        }
    )
    build(config, tmp_path / "s.zarr", progress=False)
    store = open_store(tmp_path / "s.zarr")
    assert len(store) == 3
    by_name = {c.name: c for c in store.concepts}
    assert {"brick", "paper", "wood-painted"} <= set(by_name)
    brick = by_name["brick"]
    assert brick.category == "material" and brick.frequency == 3
    assert brick.coverage == pytest.approx(3 * 0.25, rel=0.01)
    pixel, _ = store.labels(0)
    assert (pixel["material"][0, :4] == brick.id).all()


class TestOpenSurfacesContract(AdapterContract):
    """The release as the processing script writes it, all three categories."""

    expected_len = len(PHOTOS)
    manifest_required = True

    def make_adapter(self, release: Path) -> Adapter:
        return OpenSurfaces.from_config({"root": release}, ["material", "object", "scene"])


class TestOpenSurfacesMaterialsContract(AdapterContract):
    """Broden's configuration (the default): materials only, nothing else in the samples."""

    expected_len = len(PHOTOS)

    def make_adapter(self, release: Path) -> Adapter:
        return OpenSurfaces.from_config({"root": release})
