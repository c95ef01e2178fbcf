"""Folder adapter: a generated concept set in the documented layout, and broken variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapters import SampleError, SourceError
from adapters.folder import Folder

H, W = 24, 32

LABELS_CSV = """id,name,category,synonyms
1,car,object,auto;automobile
2,road,object,
1,glass,material,
300,metal,material,metallic
1,street,scene,
2,shop,scene,store
"""


def object_map() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[2:10, 3:20] = 1
    m[12:, :] = 2
    return m


def material_maps() -> tuple[np.ndarray, np.ndarray]:
    first = np.zeros((H, W), np.uint16)
    first[2:10, 3:20] = 300  # metal car body
    second = np.zeros((H, W), np.uint16)
    second[4:8, 5:12] = 1  # glass, overlapping the metal
    return first, second


def rgb_encoded(ids: np.ndarray) -> np.ndarray:
    """Broden's encoding: R = id % 256, G = id // 256."""
    rgb = np.zeros((*ids.shape, 3), np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = ids // 256
    return rgb


def make_folder(root: Path) -> Path:
    """street.jpg: one object layer (8-bit grey) and two material layers (RGB-encoded,
    16-bit grey); shop/window.png: a palette object map; plain.png: no labels at all."""
    (root / "images" / "shop").mkdir(parents=True)
    (root / "labels" / "shop").mkdir(parents=True)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(photo).save(root / "images" / "street.jpg", quality=95)
    Image.fromarray(photo).save(root / "images" / "shop" / "window.png")
    Image.fromarray(photo).save(root / "images" / "plain.png")
    Image.fromarray(object_map()).save(root / "labels" / "street_object.png")
    first, second = material_maps()
    Image.fromarray(rgb_encoded(first)).save(root / "labels" / "street_material_1.png")
    Image.fromarray(second).save(root / "labels" / "street_material_2.png")  # 16-bit grey
    palette = Image.fromarray(object_map()[::-1].copy(), mode="L").convert("P")
    palette.save(root / "labels" / "shop" / "window_object.png")
    (root / "labels.csv").write_text(LABELS_CSV)
    (root / "image_labels.csv").write_text(
        "image,category,ids\nstreet.jpg,scene,1\nshop/window,scene,2;1\n"
    )
    return root


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "my_concepts")


def make(root: Path, **options: object) -> Folder:
    adapter = Folder.from_config({"root": str(root), **options})
    adapter.check()
    assert isinstance(adapter, Folder)
    return adapter


def test_categories_kinds_and_vocabulary(folder_root: Path) -> None:
    folder = make(folder_root)
    assert folder.categories == ("material", "object", "scene")
    assert [folder.kind(c) for c in folder.categories] == ["pixel", "pixel", "image"]
    vocab = folder.vocabulary()
    assert vocab["object"] == {1: ["car", "auto", "automobile"], 2: ["road"]}
    assert vocab["material"] == {1: ["glass"], 300: ["metal", "metallic"]}
    assert vocab["scene"] == {1: ["street"], 2: ["shop", "store"]}
    assert [folder.source_id(i) for i in range(len(folder))] == [
        "plain.png",
        "shop/window.png",
        "street.jpg",
    ]


def test_single_and_multi_layer_maps_decode_to_the_ids(folder_root: Path) -> None:
    sample = make(folder_root).load(2)
    sample.validate()
    assert sample.source_id == "street.jpg"
    assert sample.pixel["object"].shape == (1, H, W)
    assert (sample.pixel["object"][0] == object_map()).all()
    first, second = material_maps()
    assert sample.pixel["material"].shape == (2, H, W)
    assert (sample.pixel["material"][0] == first).all()  # RGB: R + 256·G
    assert (sample.pixel["material"][1] == second).all()  # 16-bit grey
    assert sample.image_labels == {"scene": [1]}


def test_palette_maps_and_whole_image_labels_by_stem(folder_root: Path) -> None:
    sample = make(folder_root).load(1)
    assert (sample.pixel["object"][0] == object_map()[::-1]).all()
    assert "material" not in sample.pixel
    assert sample.image_labels == {"scene": [2, 1]}  # dominant first


def test_images_without_labels_are_kept(folder_root: Path) -> None:
    sample = make(folder_root).load(0)
    assert sample.pixel == {} and sample.image_labels == {}
    assert sample.image.shape == (H, W, 3)


def test_categories_can_be_selected_and_provenance_recorded(folder_root: Path) -> None:
    folder = Folder.from_config(
        {"root": str(folder_root), "license": "CC0", "title": "Mine"}, ["object"]
    )
    folder.check()
    assert folder.categories == ("object",) and set(folder.vocabulary()) == {"object"}
    assert set(folder.load(2).pixel) == {"object"} and folder.load(2).image_labels == {}
    assert folder.describe()["license"] == "CC0" and folder.describe()["title"] == "Mine"
    with pytest.raises(
        SourceError, match=r"does not supply categories \['part'\]; .*labels.csv declares"
    ):
        Folder.from_config({"root": str(folder_root)}, ["part"])


# -- malformed layouts ---------------------------------------------------------------------


def test_unknown_id_in_a_png(folder_root: Path) -> None:
    m = object_map()
    m[0, 0] = 9
    Image.fromarray(m).save(folder_root / "labels" / "street_object.png")
    with pytest.raises(SampleError, match=r"street_object\.png: pixel values \[9\] are not object"):
        make(folder_root).load(2)


def test_label_map_of_another_size(folder_root: Path) -> None:
    Image.fromarray(object_map()[:, :-1].copy()).save(folder_root / "labels" / "street_object.png")
    with pytest.raises(
        SampleError, match=r"street_object\.png: the label map is 31×24 but .*32×24"
    ):
        make(folder_root).load(2)


def test_16_bit_rgb_label_map_is_refused(folder_root: Path) -> None:
    import cv2

    cv2.imwrite(str(folder_root / "labels" / "street_object.png"), np.zeros((H, W, 3), np.uint16))
    with pytest.raises(SampleError, match="grey, palette or 8-bit RGB"):
        make(folder_root).load(2)


def test_missing_labels_csv(folder_root: Path) -> None:
    (folder_root / "labels.csv").unlink()
    with pytest.raises(SourceError, match=r"labels\.csv is missing"):
        Folder.from_config({"root": str(folder_root)})
    with pytest.raises(SourceError, match="is not a folder"):
        Folder.from_config({"root": str(folder_root / "nope")})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,name\n1,car\n", "the header must be id,name,category,synonyms"),
        ("id,name,category\n0,car,object\n", r"labels\.csv:2: id 0 is outside 1\.\.65535"),
        ("id,name,category\nx,car,object\n", "id 'x' is not an integer"),
        ("id,name,category\n1,car,object\n1,bus,object\n", "object id 1 is listed twice"),
        ("id,name,category\n1,car,my/cat\n", "category 'my/cat' must be"),
        ("id,name,category\n1,,object\n", "empty name"),
        ("id,name,category\n", "lists no labels"),
    ],
)
def test_malformed_labels_csv(folder_root: Path, text: str, message: str) -> None:
    (folder_root / "labels.csv").write_text(text)
    (folder_root / "image_labels.csv").unlink()
    with pytest.raises(SourceError, match=message):
        make(folder_root)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,category,ids\nnope.jpg,scene,1\n", r"image nope\.jpg is not in"),
        ("image,category,ids\nstreet,scene,7\n", r"scene ids \[7\] are not in labels\.csv"),
        ("image,category,ids\nstreet,weather,1\n", "category 'weather' is not in"),
        ("image,category,ids\nstreet,scene,1\nstreet,scene,2\n", "a second scene row"),
        ("image,category,ids\nstreet,scene,\n", "no ids"),
    ],
)
def test_malformed_image_labels_csv(folder_root: Path, text: str, message: str) -> None:
    (folder_root / "image_labels.csv").write_text(text)
    with pytest.raises(SourceError, match=message):
        make(folder_root)


def test_label_file_naming_errors(folder_root: Path) -> None:
    labels = folder_root / "labels"
    stray = labels / "street_objects.png"
    Image.fromarray(object_map()).save(stray)
    with pytest.raises(SourceError, match=r"street_objects\.png: expected <image>_<category>"):
        make(folder_root)
    stray.unlink()
    Image.fromarray(object_map()).save(labels / "street_scene.png")
    with pytest.raises(SourceError, match="'scene' is a whole-image category"):
        make(folder_root)
    (labels / "street_scene.png").unlink()
    Image.fromarray(object_map()).save(labels / "street_object_1.png")
    with pytest.raises(SourceError, match="both street_object.png and numbered object layers"):
        make(folder_root)
    (labels / "street_object_1.png").unlink()
    (labels / "street_material_2.png").rename(labels / "street_material_3.png")
    with pytest.raises(SourceError, match=r"numbered \[1, 3\]"):
        make(folder_root)
    (labels / "street_material_3.png").unlink()
    (labels / "street_material.jpg").write_bytes(b"")
    with pytest.raises(SourceError, match="must be .png files"):
        make(folder_root)


def test_missing_images_and_duplicate_stems(folder_root: Path) -> None:
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder_root / "images" / "street.png")
    with pytest.raises(SourceError, match="have the same name"):
        make(folder_root)
    for f in (folder_root / "images").rglob("*.*"):
        f.unlink()
    with pytest.raises(SourceError, match="holds no .jpg"):
        make(folder_root)


# -- end to end ----------------------------------------------------------------------------


def test_build_from_a_folder(folder_root: Path, tmp_path: Path) -> None:
    from broden.build import build
    from broden.config import parse_config
    from broden.store import open_store

    config = parse_config(
        {
            "min_frequency": 1,
            "min_coverage": 0.0,
            "colors": False,
            "sources": [{"adapter": "folder", "name": "mine", "root": str(folder_root)}],
        }
    )
    build(config, tmp_path / "s.zarr", progress=False)
    store = open_store(tmp_path / "s.zarr")
    assert len(store) == 3
    concepts = {(c.name, c.category) for c in store.concepts}
    assert {
        ("car", "object"),
        ("road", "object"),
        ("glass", "material"),
        ("metal", "material"),
        ("street-s", "scene"),
        ("shop-s", "scene"),
    } <= concepts
    by_name = {c.name: c.id for c in store.concepts}
    street = next(store.sample(i) for i in range(3) if store.sample(i).source_id == "street.jpg")
    assert street.pixel["material"].shape[0] == 2
    assert {by_name["metal"], by_name["glass"]} <= set(np.unique(street.pixel["material"]))
    assert street.image_labels["scene"][0] == by_name["street-s"]
