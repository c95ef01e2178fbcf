"""COCO adapter: real panoptic and COCO-Stuff files, and generated instances json.

Real data (tests/data/coco_panoptic, tests/data/coco_stuff; see their PROVENANCE.md):
two COCO val2017 images with their genuine panoptic PNGs and json, the same segments
in instances format (compressed RLE, from panopticapi's converter), and genuine
COCO-Stuff annotations of two train2017 images. Those two images are not in the
fixtures: the COCO-Stuff tests write stand-in JPEGs of the json's sizes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO as PyCOCO

from broden.adapters import Adapter, SampleError, SourceError
from broden.adapters.coco import COCO, category_names, paint_layers, rle_string_counts
from broden.adapters.testing import AdapterContract
from tests.conftest import DATA

PANOPTIC = DATA / "coco_panoptic" / "sample_data"
PANOPTIC_JSON = PANOPTIC / "panoptic_examples.json"
DETECTION_JSON = PANOPTIC / "panoptic_coco_detection_format.json"
PANOPTIC_PNGS = PANOPTIC / "panoptic_examples"
PANOPTIC_IMAGES = PANOPTIC / "input_images"
STUFF_JSON = DATA / "coco_stuff" / "annotations" / "stuff_examples.json"


def adapter(**options: Any) -> COCO:
    a = COCO.from_config({k: str(v) if isinstance(v, Path) else v for k, v in options.items()})
    a.check()
    assert isinstance(a, COCO)
    return a


def panoptic_adapter(**extra: Any) -> COCO:
    return adapter(
        images=PANOPTIC_IMAGES,
        annotations=PANOPTIC_JSON,
        panoptic_masks=PANOPTIC_PNGS,
        **extra,
    )


def png_segment_ids(path: Path) -> np.ndarray:
    """Independent decoding with Pillow: panopticapi's rgb2id."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def class_pixels(layers: np.ndarray) -> dict[int, int]:
    """Pixels of each class in a (K, H, W) stack: the union over layers."""
    return {int(c): int((layers == c).any(axis=0).sum()) for c in np.unique(layers) if c != 0}


def truth_from_png(annotation: dict[str, Any]) -> dict[int, int]:
    ids = png_segment_ids(PANOPTIC_PNGS / annotation["file_name"])
    counts: dict[int, int] = {}
    for seg in annotation["segments_info"]:
        counts[seg["category_id"]] = counts.get(seg["category_id"], 0) + int(
            (ids == seg["id"]).sum()
        )
    return counts


# -- real panoptic data --------------------------------------------------------------------


def test_panoptic_png_holds_exactly_the_segments_of_segments_info() -> None:
    doc = json.loads(PANOPTIC_JSON.read_text())
    for ann in doc["annotations"]:
        ids = png_segment_ids(PANOPTIC_PNGS / ann["file_name"])
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in ann["segments_info"]}
        # fact: segments_info's area is the segment's exact pixel count
        for seg in ann["segments_info"]:
            assert int((ids == seg["id"]).sum()) == seg["area"]


def test_panoptic_samples_have_the_pngs_per_category_pixels() -> None:
    coco = panoptic_adapter()
    doc = json.loads(PANOPTIC_JSON.read_text())
    by_image = {a["image_id"]: a for a in doc["annotations"]}
    assert len(coco) == 2
    for i, im in enumerate(doc["images"]):
        sample = coco.load(i)
        sample.validate()
        assert sample.source_id == im["file_name"]
        assert sample.image.shape == (im["height"], im["width"], 3)
        assert sample.pixel["object"].shape == (1, im["height"], im["width"])  # no overlaps
        assert class_pixels(sample.pixel["object"]) == truth_from_png(by_image[im["id"]])


def test_instances_rle_of_the_same_images_gives_the_panoptic_pixels() -> None:
    panoptic = panoptic_adapter()
    detection = adapter(images=PANOPTIC_IMAGES, annotations=DETECTION_JSON)
    doc = json.loads(PANOPTIC_JSON.read_text())
    by_image = {a["image_id"]: a for a in doc["annotations"]}
    assert [detection.source_id(i) for i in range(2)] == [panoptic.source_id(i) for i in range(2)]
    for i, im in enumerate(doc["images"]):
        got = class_pixels(detection.load(i).pixel["object"])
        assert got == class_pixels(panoptic.load(i).pixel["object"])
        assert got == truth_from_png(by_image[im["id"]])


def test_panoptic_vocabulary_is_the_133_categories_with_plain_names_first() -> None:
    vocab = panoptic_adapter().vocabulary()["object"]
    assert len(vocab) == 133
    assert vocab[1] == ["person"]
    assert vocab[187] == ["sky"]
    assert vocab[112] == ["door"]
    assert vocab[118] == ["floor-wood"]


def test_stuff_category_routes_isthing_0_classes() -> None:
    coco = panoptic_adapter(stuff_category="material")
    assert coco.categories == ("material", "object")
    vocab = coco.vocabulary()
    assert len(vocab["object"]) == 80 and len(vocab["material"]) == 53
    sample = coco.load(0)
    assert set(np.unique(sample.pixel["object"])) == {0, 1, 37}  # person, sports ball
    assert {int(v) for v in np.unique(sample.pixel["material"])} - {0} == {184, 187, 193}


def test_supercategories_route_before_stuff_category() -> None:
    coco = panoptic_adapter(stuff_category="material", supercategories={"sky": "scenery"})
    assert set(coco.categories) == {"material", "object", "scenery"}
    assert list(coco.vocabulary()["scenery"]) == [187]
    assert coco.kind("scenery") == "pixel"
    with pytest.raises(SourceError, match="texture"):
        COCO.from_config(
            {"images": "x", "annotations": "y.json", "category": "object"}, ["texture"]
        )


def test_crowd_and_excluded_categories_can_be_left_out() -> None:
    doc = json.loads(PANOPTIC_JSON.read_text())
    crowd = [s for s in doc["annotations"][0]["segments_info"] if s["iscrowd"]]
    assert crowd  # fact: the first image has a crowd segment
    coco = panoptic_adapter(include_crowd=False, exclude_categories=[187])
    assert 187 not in coco.vocabulary()["object"]
    pixels = class_pixels(coco.load(0).pixel["object"])
    assert 187 not in pixels
    truth = truth_from_png(doc["annotations"][0])
    for seg in crowd:
        assert pixels.get(seg["category_id"], 0) < truth[seg["category_id"]]


def test_release_and_provenance_come_from_the_json_and_manifest() -> None:
    info = panoptic_adapter().describe()
    assert info["version"] == "COCO 2018 Panoptic Dataset 1.0"
    assert "CC BY 4.0" in info["license"] and "Kirillov" in info["citation"]


# -- real COCO-Stuff data ------------------------------------------------------------------


@pytest.fixture
def stuff_images(tmp_path: Path) -> Path:
    """Stand-in JPEGs for COCO train2017 images 934 and 13715 (not in the fixtures), of the
    sizes the json gives; only the label maps are under test."""
    folder = tmp_path / "train2017"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for im in json.loads(STUFF_JSON.read_text())["images"]:
        pixels = rng.integers(0, 256, (im["height"], im["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / im["file_name"], quality=90)
    return folder


def test_coco_stuff_compressed_rle_decodes_to_its_area() -> None:
    doc = json.loads(STUFF_JSON.read_text())
    first = doc["annotations"][0]
    assert int(mask_utils.decode(first["segmentation"]).sum()) == 1463 == first["area"]
    for ann in doc["annotations"]:
        seg = ann["segmentation"]
        runs = rle_string_counts(seg["counts"].encode())
        assert runs.sum() == seg["size"][0] * seg["size"][1]
        assert runs[1::2].sum() == ann["area"]


def test_coco_stuff_samples_have_each_annotations_area(stuff_images: Path) -> None:
    coco = adapter(images=stuff_images, annotations=STUFF_JSON, exclude_categories=[183])
    doc = json.loads(STUFF_JSON.read_text())
    assert 183 not in coco.vocabulary()["object"] and len(coco.vocabulary()["object"]) == 91
    assert coco.vocabulary()["object"][157] == ["sky"]
    for i, im in enumerate(doc["images"]):
        sample = coco.load(i)
        sample.validate()
        # fact: a COCO-Stuff image's annotations do not overlap: one layer
        assert sample.pixel["object"].shape == (1, im["height"], im["width"])
        areas: dict[int, int] = {}
        for ann in doc["annotations"]:
            if ann["image_id"] == im["id"] and ann["category_id"] != 183:
                areas[ann["category_id"]] = areas.get(ann["category_id"], 0) + int(ann["area"])
        assert class_pixels(sample.pixel["object"]) == areas


def test_rle_string_counts_inverts_pycocotools_encoding() -> None:
    rng = np.random.default_rng(1)
    for h, w in [(1, 1), (3, 7), (40, 33), (128, 96)]:
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(m))
        flat = m.ravel(order="F")
        change = np.flatnonzero(np.diff(flat)) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        runs = np.diff(bounds).tolist()
        if flat[0] == 1:
            runs = [0, *runs]
        assert rle_string_counts(rle["counts"]).tolist() == runs
    with pytest.raises(ValueError, match="alphabet"):
        rle_string_counts(b"a b")
    with pytest.raises(ValueError, match="ends inside"):
        rle_string_counts(b"`")


# -- generated instances json --------------------------------------------------------------


def square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0] == 1:
        runs = [0, *runs]
    return {"counts": runs, "size": list(mask.shape)}


H, W = 40, 50


def instances_doc() -> dict[str, Any]:
    crowd = np.zeros((H, W), bool)
    crowd[5:30, 20:45] = True  # over A, C and D
    anns = [
        # A: class 1; B: class 1 overlapping A (shares layer 0)
        {"id": 11, "image_id": 1, "category_id": 1, "segmentation": square(2, 2, 20, 20)},
        {"id": 12, "image_id": 1, "category_id": 1, "segmentation": square(10, 10, 30, 25)},
        # C: class 2 overlapping A and B -> layer 1
        {"id": 13, "image_id": 1, "category_id": 2, "segmentation": square(15, 5, 25, 15)},
        # D: class 2 away from everything -> layer 0
        {"id": 14, "image_id": 1, "category_id": 2, "segmentation": square(2, 32, 12, 38)},
        # E: crowd class 3 (uncompressed RLE) over B (layer 0) and C (layer 1) -> layer 2
        {
            "id": 15,
            "image_id": 1,
            "category_id": 3,
            "iscrowd": 1,
            "segmentation": uncompressed_rle(crowd),
        },
        # F: class 4 as a compressed RLE string, on a second image
        {
            "id": 16,
            "image_id": 2,
            "category_id": 4,
            "segmentation": {
                "counts": mask_utils.encode(np.asfortranarray(crowd.astype(np.uint8)))[
                    "counts"
                ].decode(),
                "size": [H, W],
            },
        },
    ]
    for a in anns:
        a.setdefault("iscrowd", 0)
    return {
        "info": {"description": "my own dataset"},
        "images": [
            {"id": 1, "file_name": "one.png", "height": H, "width": W},
            {"id": 2, "file_name": "sub/two.png", "height": H, "width": W},
            {"id": 3, "file_name": "three.png", "height": H, "width": W},  # no annotations
        ],
        "annotations": anns,
        "categories": [
            {"id": 1, "name": "table_lamp", "supercategory": "furniture"},
            {"id": 2, "name": "cup", "supercategory": "kitchen"},
            {"id": 3, "name": "person", "supercategory": "person"},
            {"id": 4, "name": "grass-merged", "supercategory": "plant"},
            {"id": 70, "name": "unused", "supercategory": "other"},
        ],
    }


def write_instances(root: Path, doc: dict[str, Any]) -> tuple[Path, Path]:
    """The json, and an H×W grey image for each of its images (whatever sizes it says)."""
    images = root / "images"
    for im in doc["images"]:
        rel = im.get("file_name") or "/".join(im["coco_url"].split("/")[-2:])
        path = images / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(path)
    ann = root / "instances.json"
    ann.write_text(json.dumps(doc))
    return images, ann


@pytest.fixture
def instances(tmp_path: Path) -> tuple[Path, Path]:
    return write_instances(tmp_path, instances_doc())


def test_overlapping_annotations_lose_no_pixel(instances: tuple[Path, Path]) -> None:
    images, ann = instances
    coco = adapter(images=images, annotations=ann)
    truth = PyCOCO(str(ann))  # pycocotools' own decoding, annotation by annotation
    for i in range(len(coco)):
        sample = coco.load(i)
        sample.validate()
        layers = sample.pixel["object"]
        image_id = truth.getImgIds()[i]
        expected: dict[int, np.ndarray] = {}
        for a in truth.loadAnns(truth.getAnnIds(imgIds=[image_id])):
            m = truth.annToMask(a).astype(bool)
            expected[a["category_id"]] = expected.get(a["category_id"], False) | m
        for cid, union in expected.items():
            assert ((layers == cid).any(axis=0) == union).all(), f"class {cid}"
        assert set(np.unique(layers).tolist()) - {0} == set(expected)


def test_layers_are_filled_greedily_in_json_order(instances: tuple[Path, Path]) -> None:
    images, ann = instances
    truth = PyCOCO(str(ann))
    masks = {a["id"]: truth.annToMask(a).astype(bool) for a in truth.loadAnns(truth.getAnnIds())}
    layers = adapter(images=images, annotations=ann).load(0).pixel["object"]
    assert layers.shape == (3, H, W)
    assert layers.dtype == np.uint16
    # A, B (same class, overlapping) and D in layer 0; C in 1; the crowd E in 2
    assert (layers[0][masks[11] | masks[12]] == 1).all()
    assert (layers[0][masks[14]] == 2).all()
    assert (layers[1][masks[13]] == 2).all() and set(np.unique(layers[1])) == {0, 2}
    assert (layers[2][masks[15]] == 3).all() and set(np.unique(layers[2])) == {0, 3}


def test_paint_layers_never_overwrites() -> None:
    rng = np.random.default_rng(2)
    shape = (16, 16)
    stack: list[np.ndarray] = []
    union: dict[int, np.ndarray] = {}
    for _ in range(60):
        label = int(rng.integers(1, 5))
        y, x = rng.integers(0, 12, 2)
        box = (slice(y, y + 5), slice(x, x + 5))
        mask = rng.random((5, 5)) < 0.6
        full = np.zeros(shape, bool)
        full[box] = mask
        union[label] = union.get(label, np.zeros(shape, bool)) | full
        paint_layers(stack, label, mask, box, shape)
    layers = np.stack(stack)
    for label, pixels in union.items():
        assert ((layers == label).any(axis=0) == pixels).all()


def test_images_without_annotations_are_kept(instances: tuple[Path, Path]) -> None:
    images, ann = instances
    coco = adapter(images=images, annotations=ann)
    assert [coco.source_id(i) for i in range(len(coco))] == ["one.png", "sub/two.png", "three.png"]
    empty = coco.load(2)
    assert empty.pixel["object"].shape == (1, H, W) and not empty.pixel["object"].any()


def test_user_dataset_names_and_provenance(instances: tuple[Path, Path]) -> None:
    images, ann = instances
    coco = adapter(images=images, annotations=ann)
    vocab = coco.vocabulary()["object"]
    assert vocab[1] == ["table lamp"] and vocab[4] == ["grass"] and 70 in vocab
    info = coco.describe()
    assert info["title"] == "my own dataset" and "license" not in info  # not COCO's terms


def test_lvis_names_synonyms_and_coco_url_paths(tmp_path: Path) -> None:
    doc = instances_doc()
    doc["info"] = {"description": "LVIS v1"}
    for im in doc["images"]:
        im["coco_url"] = f"http://images.cocodataset.org/val2017/{Path(im.pop('file_name')).name}"
    doc["categories"][0].update(synset="lamp.n.02", synonyms=["table_lamp", "desk_lamp"])
    images, ann = write_instances(tmp_path, doc)
    coco = adapter(images=images, annotations=ann)
    assert coco.source_id(1) == "val2017/two.png"
    assert coco.vocabulary()["object"][1] == ["table lamp", "desk lamp"]
    assert category_names({"name": "bat_(animal)", "synonyms": ["bat_(animal)"]}) == [
        "bat (animal)"
    ]
    assert coco.load(1).pixel["object"].any()


# -- malformed input -----------------------------------------------------------------------


def test_json_that_does_not_parse(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(SourceError, match=r"bad\.json is not valid JSON"):
        adapter(images=tmp_path, annotations=bad)
    with pytest.raises(SourceError, match="does not exist"):
        adapter(images=tmp_path, annotations=tmp_path / "missing.json")
    bad.write_text('{"annotations": []}')
    with pytest.raises(SourceError, match="no `images` list"):
        adapter(images=tmp_path, annotations=bad)


def test_annotations_of_unknown_images_fail_the_check(tmp_path: Path) -> None:
    doc = instances_doc()
    doc["annotations"][2]["image_id"] = 999
    images, ann = write_instances(tmp_path, doc)
    with pytest.raises(SourceError, match=r"1 annotations refer to image ids .*999"):
        adapter(images=images, annotations=ann)


def test_unknown_category_id_skips_the_image(tmp_path: Path) -> None:
    doc = instances_doc()
    doc["annotations"][3]["category_id"] = 55
    images, ann = write_instances(tmp_path, doc)
    coco = adapter(images=images, annotations=ann)
    with pytest.raises(SampleError, match=r"annotation 14 of image 1 .*category_id 55"):
        coco.load(0)
    coco.load(1)  # other images are unaffected


def test_missing_image_file(instances: tuple[Path, Path]) -> None:
    images, ann = instances
    (images / "sub" / "two.png").unlink()
    with pytest.raises(SampleError, match=r"two\.png: file is missing"):
        adapter(images=images, annotations=ann).load(1)


def test_image_of_another_size_than_the_json_says(tmp_path: Path) -> None:
    doc = instances_doc()
    doc["images"][2]["height"] = H + 1
    images, ann = write_instances(tmp_path, doc)
    with pytest.raises(SampleError, match=r"three\.png: the image is 50×40 but .* says 50×41"):
        adapter(images=images, annotations=ann).load(2)


@pytest.mark.parametrize("kind", ["uncompressed", "compressed"])
def test_rle_of_another_size_than_the_image(tmp_path: Path, kind: str) -> None:
    doc = instances_doc()
    index = 4 if kind == "uncompressed" else 5
    doc["annotations"][index]["segmentation"]["size"] = [H, W + 2]
    images, ann = write_instances(tmp_path, doc)
    with pytest.raises(SampleError, match=r"RLE size 52×40 differs from the image's 50×40"):
        adapter(images=images, annotations=ann).load(0 if kind == "uncompressed" else 1)


def test_rle_whose_runs_do_not_cover_the_image(tmp_path: Path) -> None:
    doc = instances_doc()
    seg = doc["annotations"][5]["segmentation"]
    seg["counts"] = seg["counts"][:-2]
    doc["annotations"][4]["segmentation"]["counts"].append(3)
    images, ann = write_instances(tmp_path, doc)
    coco = adapter(images=images, annotations=ann)
    with pytest.raises(SampleError, match=r"annotation 15 .*add up to 2003, not 40×50"):
        coco.load(0)
    with pytest.raises(SampleError, match=r"annotation 16 .*(add up|corrupt RLE)"):
        coco.load(1)


def test_malformed_polygon(tmp_path: Path) -> None:
    doc = instances_doc()
    doc["annotations"][0]["segmentation"] = [[1, 2, 3, 4, 5]]
    images, ann = write_instances(tmp_path, doc)
    with pytest.raises(SampleError, match="annotation 11 .*odd number of coordinates"):
        adapter(images=images, annotations=ann).load(0)


def test_two_point_polygon_is_empty_not_a_box(tmp_path: Path) -> None:
    # pycocotools' frPyObjects reads a 4-number first polygon as a bounding box
    doc = instances_doc()
    doc["annotations"][1]["segmentation"] = [[10, 10, 30, 25]]
    images, ann = write_instances(tmp_path, doc)
    layers = adapter(images=images, annotations=ann).load(0).pixel["object"]
    assert class_pixels(layers)[1] == int(
        mask_utils.area(mask_utils.frPyObjects(square(2, 2, 20, 20), H, W)[0])
    )


def test_panoptic_json_needs_its_png_folder() -> None:
    with pytest.raises(SourceError, match="set `panoptic`"):
        adapter(images=PANOPTIC_IMAGES, annotations=PANOPTIC_JSON)
    with pytest.raises(SourceError, match="not a panoptic json"):
        adapter(images=PANOPTIC_IMAGES, annotations=DETECTION_JSON, panoptic_masks=PANOPTIC_PNGS)
    with pytest.raises(SourceError, match="instead of `root`|has no `root`"):
        COCO.from_config({"root": "x", "images": "x", "annotations": "y.json"})


def test_panoptic_image_without_annotation_is_kept_unlabeled(tmp_path: Path) -> None:
    doc = json.loads(PANOPTIC_JSON.read_text())
    doc["annotations"] = doc["annotations"][1:]
    (tmp_path / "p.json").write_text(json.dumps(doc))
    coco = adapter(
        images=PANOPTIC_IMAGES, annotations=tmp_path / "p.json", panoptic_masks=PANOPTIC_PNGS
    )
    assert not coco.load(0).pixel["object"].any() and coco.load(1).pixel["object"].any()


def test_non_ascii_rle_string_is_malformed(tmp_path: Path) -> None:
    doc = instances_doc()
    doc["annotations"][5]["segmentation"]["counts"] = (
        "é" + doc["annotations"][5]["segmentation"]["counts"]
    )
    images, ann = write_instances(tmp_path, doc)
    with pytest.raises(SampleError, match="annotation 16 .*not ASCII"):
        adapter(images=images, annotations=ann).load(1)


def test_panoptic_png_with_an_undeclared_segment(tmp_path: Path) -> None:
    pngs = tmp_path / "pngs"
    shutil.copytree(PANOPTIC_PNGS, pngs)
    path = pngs / "000000142238.png"
    rgb = np.asarray(Image.open(path).convert("RGB")).copy()
    rgb[0, 0] = (7, 0, 0)
    Image.fromarray(rgb).save(path)
    coco = adapter(images=PANOPTIC_IMAGES, annotations=PANOPTIC_JSON, panoptic_masks=pngs)
    with pytest.raises(SampleError, match=r"000000142238\.png: segment ids \[7\] are not in"):
        coco.load(0)


# -- end to end ----------------------------------------------------------------------------


def test_build_from_panoptic_json(tmp_path: Path) -> None:
    from broden.build import build
    from broden.config import parse_config
    from broden.store import open_store

    config = parse_config(
        {
            "min_frequency": 1,
            "min_coverage": 0.0,
            "colors": False,
            "sources": [
                {
                    "adapter": "coco",
                    "images": str(PANOPTIC_IMAGES),
                    "annotations": str(PANOPTIC_JSON),
                    "panoptic_masks": str(PANOPTIC_PNGS),
                }
            ],
        }
    )
    build(config, tmp_path / "s.zarr", progress=False)
    store = open_store(tmp_path / "s.zarr")
    assert len(store) == 2
    names = {c.name for c in store.concepts}
    assert {"person", "horse", "truck", "sky", "grass", "tree", "gravel"} <= names
    assert all(c.category == "object" for c in store.concepts)
    by_name = {c.name: c.id for c in store.concepts}
    for i in range(2):
        sample = store.sample(i)
        assert by_name["person"] in sample.pixel["object"]
        assert set(np.unique(sample.pixel["object"])) <= {0, *by_name.values()}
    assert store.sample(1).source_id == "000000439180.jpg"


# -- the adapter contract ------------------------------------------------------------------


class TestCOCOPanopticContract(AdapterContract):
    """The genuine panoptic json and PNGs."""

    expected_len = 2
    manifest_required = True

    def make_adapter(self) -> Adapter:
        return COCO.from_config(
            {"images": PANOPTIC_IMAGES, "annotations": PANOPTIC_JSON, "panoptic": PANOPTIC_PNGS}
        )


class TestCOCOInstancesContract(AdapterContract):
    """The same images' segments in instances format (panopticapi's converter output)."""

    expected_len = 2
    manifest_required = True

    def make_adapter(self) -> Adapter:
        return COCO.from_config({"images": PANOPTIC_IMAGES, "annotations": DETECTION_JSON})


@pytest.fixture(scope="module")
def own_instances(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_instances(tmp_path_factory.mktemp("coco"), instances_doc())


class TestCOCOOwnDatasetContract(AdapterContract):
    """A user's instances json: overlapping layers, crowd RLE, an image without labels."""

    expected_len = 3

    def make_adapter(self, own_instances: tuple[Path, Path]) -> Adapter:
        images, annotations = own_instances
        return COCO.from_config({"images": images, "annotations": annotations})
