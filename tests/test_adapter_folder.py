"""Folder adapter: a generated concept set in the documented layout, and broken variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from broden.adapters import SampleError, SourceError
from broden.adapters.base import Adapter, SourceSample
from broden.adapters.folder import Folder
from broden.adapters.testing import AdapterContract

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


# -- per-concept masks ---------------------------------------------------------------------


def box_mask(rows: slice, cols: slice, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[rows, cols] = True
    return m


#: street.jpg (it also has label maps): object masks, painted in file-name order
STREET_MASKS = {
    "1_a.png": box_mask(slice(0, 4), slice(0, 8)),  # car, on the map's car and free pixels
    "1_b.png": box_mask(slice(10, 16), slice(20, 30)),  # car over the map's road: layer 1
    "2.png": box_mask(slice(8, 14), slice(0, 32)),  # road over car in layers 0, 1: layer 2
}
#: field.png (masks only): objects ...
FIELD_OBJECT_MASKS = {
    "1.png": box_mask(slice(0, 10), slice(0, 10)),  # car
    "1_b.png": box_mask(slice(5, 15), slice(5, 15)),  # car overlapping car: same layer
    "1_empty.png": np.zeros((H, W), bool),  # an all-zero mask adds nothing
    "2.png": box_mask(slice(8, 20), slice(8, 30)),  # road over car: layer 1
    "2_x.png": box_mask(slice(20, 24), slice(0, 32)),  # road, free in layer 0
}
#: ... and materials
FIELD_MATERIAL_MASKS = {
    "1.png": box_mask(slice(6, 18), slice(10, 20)),  # glass
    "300.png": box_mask(slice(0, 12), slice(0, 16)),  # metal over glass: layer 1
    "300_b.png": box_mask(slice(10, 24), slice(12, 30)),  # metal over glass, beside metal: 1
}


def save_mask(path: Path, mask: np.ndarray, style: str) -> None:
    """Write a binary mask in one of the PNG flavours an annotation tool may export."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "grey":  # 8-bit, 0/255
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    elif style == "grey16":  # 16-bit, 0/1
        Image.fromarray(mask.astype(np.uint16)).save(path)
    elif style == "bilevel":  # 1-bit
        Image.fromarray(mask).convert("1").save(path)
    elif style == "palette":  # palette indices 0/1
        Image.fromarray(mask.astype(np.uint8), mode="L").convert("P").save(path)
    elif style == "rgb":  # red on black
        rgb = np.zeros((*mask.shape, 3), np.uint8)
        rgb[mask, 0] = 255
        Image.fromarray(rgb).save(path)
    elif style == "rgba":  # green on black, opaque everywhere
        rgba = np.zeros((*mask.shape, 4), np.uint8)
        rgba[mask, 1] = 200
        rgba[..., 3] = 255
        Image.fromarray(rgba).save(path)
    else:
        raise AssertionError(style)


STYLES = ("grey", "grey16", "bilevel", "palette", "rgb", "rgba")


def make_mask_folder(root: Path) -> Path:
    """The folder of make_folder plus masks/: street.jpg gets object masks on top of its
    label map; the new field.png has object and material masks only."""
    make_folder(root)
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(photo).save(root / "images" / "field.png")
    masks = root / "masks"
    styles = iter(STYLES * 4)
    for folder, files in (
        (masks / "street" / "object", STREET_MASKS),
        (masks / "field" / "object", FIELD_OBJECT_MASKS),
        (masks / "field" / "material", FIELD_MATERIAL_MASKS),
    ):
        for name, mask in files.items():
            save_mask(folder / name, mask, next(styles))
    return root


@pytest.fixture
def mask_root(tmp_path: Path) -> Path:
    return make_mask_folder(tmp_path / "my_concepts")


def pixels_of(stack: np.ndarray, label: int) -> np.ndarray:
    """Where ``label`` is, in any layer of a K×H×W stack."""
    return (stack == label).any(axis=0)


def union(masks: dict[str, np.ndarray], label: int) -> np.ndarray:
    out = np.zeros((H, W), bool)
    for name, mask in masks.items():
        if int(name.split("_")[0].removesuffix(".png")) == label:
            out |= mask
    return out


def load_by_id(folder: Adapter, source_id: str) -> SourceSample:
    ids = [folder.source_id(i) for i in range(len(folder))]
    return folder.load(ids.index(source_id))


def test_mask_styles_read_as_binary(tmp_path: Path) -> None:
    from broden.adapters.decode import read_png
    from broden.adapters.folder import decode_mask_png

    mask = box_mask(slice(3, 9), slice(4, 20))
    for style in STYLES:
        path = tmp_path / f"{style}.png"
        save_mask(path, mask, style)
        assert (decode_mask_png(read_png(path), path) == mask).all(), style


def test_masks_only_image_layers_without_overwriting(mask_root: Path) -> None:
    folder = make(mask_root)
    assert [folder.source_id(i) for i in range(len(folder))] == [
        "field.png",
        "plain.png",
        "shop/window.png",
        "street.jpg",
    ]
    sample = load_by_id(folder, "field.png")
    sample.validate()
    objects = sample.pixel["object"]
    assert objects.shape == (2, H, W) and objects.dtype == np.uint16
    for label in (1, 2):
        assert (pixels_of(objects, label) == union(FIELD_OBJECT_MASKS, label)).all()
    # exactly: layer 0 = every car mask (same-id overlap shares it) + the free road mask,
    # layer 1 = the road mask that overlaps the cars
    car = union(FIELD_OBJECT_MASKS, 1)
    road_low = FIELD_OBJECT_MASKS["2_x.png"]
    assert (objects[0] == np.where(car, 1, np.where(road_low, 2, 0))).all()
    assert (objects[1] == np.where(FIELD_OBJECT_MASKS["2.png"], 2, 0)).all()

    materials = sample.pixel["material"]
    assert materials.shape == (2, H, W)
    for label in (1, 300):
        assert (pixels_of(materials, label) == union(FIELD_MATERIAL_MASKS, label)).all()
    assert (materials[0] == np.where(FIELD_MATERIAL_MASKS["1.png"], 1, 0)).all()  # glass first
    assert set(np.unique(materials[1])) == {0, 300}  # both metal masks share layer 1
    assert sample.image_labels == {}


def test_masks_go_on_top_of_label_maps(mask_root: Path) -> None:
    sample = load_by_id(make(mask_root), "street.jpg")
    sample.validate()
    objects = sample.pixel["object"]
    assert objects.shape == (3, H, W)
    label_map = object_map()
    labelled = label_map != 0
    assert (objects[0][labelled] == label_map[labelled]).all()  # the label map is intact
    for label in (1, 2):
        want = (label_map == label) | union(STREET_MASKS, label)
        assert (pixels_of(objects, label) == want).all()
    assert (objects[1] == np.where(STREET_MASKS["1_b.png"], 1, 0)).all()
    assert (objects[2] == np.where(STREET_MASKS["2.png"], 2, 0)).all()
    assert set(np.unique(objects)) == {0, 1, 2}
    first, second = material_maps()
    assert (sample.pixel["material"] == np.stack([first, second])).all()  # no masks: as before
    assert sample.image_labels == {"scene": [1]}


def test_masks_without_labels_folder_and_selected_categories(mask_root: Path) -> None:
    import shutil

    shutil.rmtree(mask_root / "labels")
    folder = make(mask_root)
    street = load_by_id(folder, "street.jpg")
    assert street.pixel["object"].shape == (2, H, W)  # masks only now: 1_a + 1_b | 2
    for label in (1, 2):
        assert (pixels_of(street.pixel["object"], label) == union(STREET_MASKS, label)).all()
    assert "material" not in street.pixel and load_by_id(folder, "plain.png").pixel == {}

    only_material = Folder.from_config({"root": str(mask_root)}, ["material"])
    only_material.check()
    field = load_by_id(only_material, "field.png")
    assert set(field.pixel) == {"material"}


def test_only_empty_masks_give_one_zero_layer(mask_root: Path) -> None:
    empty = mask_root / "masks" / "plain" / "material" / "1.png"
    save_mask(empty, np.zeros((H, W), bool), "grey")
    sample = load_by_id(make(mask_root), "plain.png")
    assert sample.pixel["material"].shape == (1, H, W)
    assert not sample.pixel["material"].any()


@pytest.mark.parametrize(
    ("rel", "message"),
    [
        ("nope/object/1.png", r"masks/nope/object/1\.png: no image nope\.jpg/\.jpeg/\.png"),
        ("street.jpg/object/1.png", r"street\.jpg/object/1\.png: .*name the folder street,"),
        ("street/weather/1.png", r"street/weather/1\.png: category 'weather' is not in labels"),
        ("street/scene/1.png", r"street/scene/1\.png: category 'scene' is a whole-image cat"),
        ("street/object/7.png", r"street/object/7\.png: id 7 is not in labels\.csv for categ"),
        ("street/object/0_a.png", r"street/object/0_a\.png: id 0 is not in labels\.csv"),
        ("street/object/1.jpg", r"street/object/1\.jpg: masks must be \.png files"),
        ("street/object/car.png", r"street/object/car\.png: bad mask file name 'car\.png'"),
        ("street/object/1_.png", r"street/object/1_\.png: bad mask file name"),
        ("street/1.png", r"masks/street/1\.png: misplaced mask; expected masks/<image path"),
    ],
)
def test_mask_file_errors_name_the_file(mask_root: Path, rel: str, message: str) -> None:
    save_mask(mask_root / "masks" / rel, box_mask(slice(0, 2), slice(0, 2)), "grey")
    with pytest.raises(SourceError, match=message):
        make(mask_root)


def test_mask_of_another_size_or_unreadable_is_a_sample_error(mask_root: Path) -> None:
    path = mask_root / "masks" / "field" / "object" / "2.png"
    save_mask(path, FIELD_OBJECT_MASKS["2.png"][:, :-1], "grey")
    folder = make(mask_root)
    with pytest.raises(
        SampleError, match=r"field/object/2\.png: the mask is 31×24 but the image field\.png"
    ):
        load_by_id(folder, "field.png")
    path.write_bytes(b"not a png")
    with pytest.raises(SampleError, match=r"field/object/2\.png: not a PNG file"):
        load_by_id(folder, "field.png")
    save_mask(path, FIELD_OBJECT_MASKS["2.png"], "grey")
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(SampleError, match=r"field/object/2\.png: corrupt or truncated PNG"):
        load_by_id(folder, "field.png")


def test_build_from_masks(tmp_path: Path) -> None:
    """Masks only (no labels/), square images at the label size so the store's pixel
    maps are the masks themselves; a mask of the wrong size skips its image."""
    from broden.build import build
    from broden.config import parse_config
    from broden.store import open_store

    root = tmp_path / "masked"
    (root / "images").mkdir(parents=True)
    (root / "labels.csv").write_text("id,name,category\n1,car,object\n2,road,object\n")
    S = 16
    rng = np.random.default_rng(2)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (S, S, 3), dtype=np.uint8)).save(
            root / "images" / name
        )
    cars = [
        box_mask(slice(0, 8), slice(0, 8), (S, S)),
        box_mask(slice(4, 12), slice(4, 12), (S, S)),
    ]
    road = box_mask(slice(6, 16), slice(0, 16), (S, S))
    save_mask(root / "masks" / "a" / "object" / "1_first.png", cars[0], "grey")
    save_mask(root / "masks" / "a" / "object" / "1_second.png", cars[1], "rgb")
    save_mask(root / "masks" / "a" / "object" / "2.png", road, "palette")
    save_mask(root / "masks" / "b" / "object" / "1.png", cars[0][:-1], "grey")  # wrong size

    config = parse_config(
        {
            "image_size": 2 * S,  # label maps S×S: the source's own grid
            "min_frequency": 1,
            "min_coverage": 0.0,
            "colors": False,
            "sources": [{"adapter": "folder", "name": "masked", "root": str(root)}],
        }
    )
    report = build(config, tmp_path / "m.zarr", progress=False)
    assert [(s.source_id, "the mask is 16×15" in s.reason) for s in report.skipped] == [
        ("b.png", True)
    ]
    store = open_store(tmp_path / "m.zarr")
    assert len(store) == 1
    by_name = {c.name: c.id for c in store.concepts}
    sample = store.sample(0)
    assert sample.source_id == "a.png"
    objects = sample.pixel["object"]
    assert objects.shape[1:] == (S, S)
    assert (pixels_of(objects, by_name["car"]) == cars[0] | cars[1]).all()
    assert (pixels_of(objects, by_name["road"]) == road).all()
    assert objects.shape[0] == 2  # road over the cars: a second layer
    assert (objects[0] == np.where(cars[0] | cars[1], by_name["car"], 0)).all()
    assert (objects[1] == np.where(road, by_name["road"], 0)).all()


# -- the adapter contract ------------------------------------------------------------------


@pytest.fixture(scope="module")
def contract_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mask_folder(tmp_path_factory.mktemp("folder") / "my_concepts")


class TestFolderContract(AdapterContract):
    """Label maps (grey, 16-bit, RGB, palette), masks on top, whole-image labels."""

    expected_len = 4

    def make_adapter(self, contract_root: Path) -> Adapter:
        return Folder.from_config({"root": str(contract_root)})
