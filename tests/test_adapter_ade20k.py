"""ADE20K adapter on the real 2021 release files (and a 2016 layout around a real _seg.png)."""

from __future__ import annotations

import json
import pickle
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from broden.adapters import Adapter, SampleError, SourceError
from broden.adapters.ade20k import ADE20K, normalize_scene
from broden.adapters.testing import AdapterContract
from tests.conftest import ADE_IDS, ADE_ROOT, ADE_STREET, DATA


def pil_classes(path: Path) -> np.ndarray:
    """Independent decoding with Pillow, as the official MATLAB code writes it."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] // 10 * 256 + rgb[..., 1]


def json_objects(image_id: str) -> list[dict]:
    return json.loads((ADE_STREET / f"{image_id}.json").read_text())["annotation"]["object"]


@pytest.fixture(scope="module")
def ade() -> ADE20K:
    adapter = ADE20K.from_config({"root": str(ADE_ROOT)})
    adapter.check()
    return adapter  # type: ignore[return-value]


def test_release_and_samples_are_found_without_the_index(ade: ADE20K) -> None:
    assert ade.release_version() == "ADE20K_2021_17_01"
    assert [Path(ade.source_id(i)).stem for i in range(len(ade))] == list(ADE_IDS)


@pytest.mark.parametrize("position", [0, 1])
def test_decoded_classes_per_level_are_the_json_name_ndx(ade: ADE20K, position: int) -> None:
    image_id = ADE_IDS[position]
    sample = ade.load(position)
    objs = json_objects(image_id)
    levels = [sample.pixel["object"][0]] + list(sample.pixel.get("part", []))
    for level, labels in enumerate(levels):
        decoded = set(np.unique(labels).tolist()) - {0}
        declared = {o["name_ndx"] for o in objs if o["parts"]["part_level"] == level}
        assert decoded == declared, f"level {level}"
    assert len(levels) == (3 if image_id == "ADE_train_00016869" else 2)


@pytest.mark.parametrize("position", [0, 1])
def test_names_are_the_json_names_split_into_synonyms(ade: ADE20K, position: int) -> None:
    vocab = ade.vocabulary()
    for obj in json_objects(ADE_IDS[position]):
        assert vocab["object"][obj["name_ndx"]] == [n.strip() for n in obj["name"].split(", ")]
    assert vocab["object"][401] == ["car", "auto", "automobile", "machine", "motorcar"]
    assert vocab["part"][3035] == ["wheel"]


@pytest.mark.parametrize("position", [0, 1])
def test_pixel_counts_equal_an_independent_decoding_of_the_masks(
    ade: ADE20K, position: int
) -> None:
    image_id = ADE_IDS[position]
    sample = ade.load(position)
    files = [f"{image_id}_seg.png"] + [
        f"{image_id}_parts_{k}.png" for k in range(1, len(sample.pixel["part"]) + 1)
    ]
    levels = [sample.pixel["object"][0]] + list(sample.pixel["part"])
    for labels, name in zip(levels, files, strict=True):
        truth = pil_classes(ADE_STREET / name)
        ids, counts = np.unique(truth, return_counts=True)
        got_ids, got_counts = np.unique(labels, return_counts=True)
        assert ids.tolist() == got_ids.tolist() and counts.tolist() == got_counts.tolist()


@pytest.mark.parametrize("position", [0, 1])
def test_visible_instance_masks_agree_with_the_class_masks(ade: ADE20K, position: int) -> None:
    """The json's amodal instance masks (255 = visible) are an independent annotation of the
    same pixels: per level and class their union matches the class mask (IoU 1.0 for most;
    measured minimum 0.964, a level-2 window whose mask spills under a mirror)."""
    image_id = ADE_IDS[position]
    sample = ade.load(position)
    levels = [sample.pixel["object"][0]] + list(sample.pixel["part"])
    union: dict[tuple[int, int], np.ndarray] = {}
    for obj in json_objects(image_id):
        mask = np.asarray(Image.open(ADE_STREET / obj["instance_mask"])) == 255
        key = (obj["parts"]["part_level"], obj["name_ndx"])
        union[key] = union.get(key, np.zeros_like(mask)) | mask
    ious = []
    for (level, ndx), visible in union.items():
        region = levels[level] == ndx
        ious.append((visible & region).sum() / (visible | region).sum())
    assert min(ious) > 0.95
    assert np.mean(np.array(ious) == 1.0) > 0.85


def test_part_of_edges_are_the_declared_ispartof_pairs(ade: ADE20K) -> None:
    sample = ade.load(0)  # ADE_train_00016869: parts of cars, buildings, a traffic light
    objs = json_objects("ADE_train_00016869")
    by_id = {o["id"]: o for o in objs}
    declared = {
        (o["parts"]["part_level"], o["name_ndx"], by_id[o["parts"]["ispartof"]]["name_ndx"])
        for o in objs
        if o["parts"]["part_level"] > 0
    }
    edges = {(e.part, e.parent): e for e in sample.part_of}
    assert {(p, o) for _, p, o in declared} == set(edges)
    wheel_car = edges[(3035, 401)]
    assert wheel_car.parent_category == "object" and wheel_car.part_category == "part"
    rim_wheel = edges[(2122, 3035)]
    assert rim_wheel.parent_category == "part"  # level 2: a part of a part
    # pixel counts: the part's pixels lying on its parent class in the level below
    seg, parts1, parts2 = (
        pil_classes(ADE_STREET / f"ADE_train_00016869{s}.png")
        for s in ("_seg", "_parts_1", "_parts_2")
    )
    assert wheel_car.pixels == int(((parts1 == 3035) & (seg == 401)).sum())
    assert rim_wheel.pixels == int(((parts2 == 2122) & (parts1 == 3035)).sum())
    # a window of a building and a window of a car are two edges of one part label
    assert edges[(3050, 312)].pixels + edges[(3050, 401)].pixels == int((parts1 == 3050).sum())


def test_scene_is_read_from_the_json(ade: ADE20K) -> None:
    assert ade.vocabulary()["scene"] == {1: ["street"]}
    assert ade.load(1).image_labels == {"scene": [1]}
    assert normalize_scene(["outdoor", "urban", "street"]) == "street"
    assert normalize_scene("airport/airport") == "airport-airport"
    assert normalize_scene("~not labeled") is None


def test_categories_can_be_restricted(ade: ADE20K) -> None:
    only_scene = ADE20K.from_config({"root": str(ADE_ROOT)}, categories=["scene"])
    sample = only_scene.load(0)
    assert sample.pixel == {} and sample.image_labels == {"scene": [1]}
    with pytest.raises(SourceError, match="does not supply"):
        ADE20K.from_config({"root": str(ADE_ROOT)}, categories=["texture"])


# -- the pickled index is never loaded unverified ------------------------------------------


class _Tripwire:
    """Unpickling this object creates a file: proof that a pickle was loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(self.path),))


def test_unverified_index_pickle_is_never_loaded(ade_copy: Path, tmp_path: Path) -> None:
    trip = tmp_path / "unpickled"
    (ade_copy / "index_ade20k.pkl").write_bytes(pickle.dumps(_Tripwire(str(trip))))
    adapter = ADE20K.from_config({"root": str(ade_copy)})
    with pytest.warns(UserWarning, match="not loaded"):
        adapter.check()
    assert not trip.exists()
    assert len(adapter) == 2  # names came from the json files


def test_index_pickle_with_a_wrong_checksum_is_refused(ade_copy: Path, tmp_path: Path) -> None:
    trip = tmp_path / "unpickled"
    (ade_copy / "index_ade20k.pkl").write_bytes(pickle.dumps(_Tripwire(str(trip))))
    adapter = ADE20K.from_config({"root": str(ade_copy), "index_sha256": "0" * 64})
    with pytest.raises(SourceError, match="refusing to unpickle"):
        adapter.check()
    assert not trip.exists()


def test_index_pickle_with_a_trusted_checksum_is_used(ade_copy: Path) -> None:
    import hashlib

    index = {
        "filename": [f"{i}.jpg" for i in ADE_IDS],
        "folder": ["ADE20K_2021_17_01/images/ADE/training/urban/street"] * 2,
        "scene": ["street", "street"],
        "objectnames": [f"name {i}" for i in range(1, 3689)],
    }
    data = pickle.dumps(index)
    (ade_copy / "index_ade20k.pkl").write_bytes(data)
    adapter = ADE20K.from_config(
        {"root": str(ade_copy), "index_sha256": hashlib.sha256(data).hexdigest()}
    )
    adapter.check()
    assert adapter.vocabulary()["object"][401] == ["name 401"]
    assert adapter.load(0).pixel["object"].shape == (1, 1536, 2048)


# -- the 2016 layout -----------------------------------------------------------------------


def make_2016_release(root: Path) -> None:
    """ADE20K_2016_07_26 layout around the genuine 2016 _seg.png of ADE_train_00000970."""
    folder = root / "images" / "training" / "a" / "abbey"
    folder.mkdir(parents=True)
    shutil.copy(DATA / "ade20k_2016" / "ADE_train_00000970_raw.png",
                folder / "ADE_train_00000970_seg.png")  # fmt: skip
    raw = np.asarray(Image.open(folder / "ADE_train_00000970_seg.png").convert("RGB"))
    Image.fromarray(np.full_like(raw, 128)).save(folder / "ADE_train_00000970.jpg")
    names150 = {}
    for line in (DATA / "ade20k_2016" / "objectInfo150.txt").read_text().splitlines()[1:]:
        idx, *_, name = line.split("\t")
        names150[int(idx)] = name
    full_to_150 = {}
    for line in (DATA / "ade20k_2016" / "mapFromADE.txt").read_text().split("\n"):
        if line.strip():
            challenge, full = line.split()
            full_to_150[int(full)] = int(challenge)
    objectnames = np.array(
        [names150.get(full_to_150.get(i, 0), f"class {i}") for i in range(1, 3149)], dtype=object
    )
    index = {
        "filename": np.array(["ADE_train_00000970.jpg"], dtype=object),
        "folder": np.array(["ADE20K_2016_07_26/images/training/a/abbey"], dtype=object),
        "scene": np.array(["abbey"], dtype=object),
        "objectnames": objectnames,
    }
    scipy.io.savemat(root / "index_ade20k.mat", {"index": index})


def test_2016_release_decodes_to_the_official_150_class_conversion(tmp_path: Path) -> None:
    root = tmp_path / "ADE20K_2016_07_26"
    make_2016_release(root)
    adapter = ADE20K.from_config({"root": str(root)})
    adapter.check()
    assert adapter.release_version() == "ADE20K_2016_07_26"
    sample = adapter.load(0)
    classes = sample.pixel["object"][0]
    assert set(np.unique(classes).tolist()) == {0, 312, 838, 1125, 1910, 2128, 2855}
    assert adapter.vocabulary()["object"][312] == ["building", "edifice"]
    assert sample.image_labels == {"scene": [1]}
    # map to the 150 classes and resize (nearest, half-pixel) as the devkit did
    lut = np.zeros(7000, np.int64)
    for line in (DATA / "ade20k_2016" / "mapFromADE.txt").read_text().split("\n"):
        if line.strip():
            challenge, full = map(int, line.split())
            lut[full] = challenge
    official = np.asarray(Image.open(DATA / "ade20k_2016" / "ADE_train_00000970_challenge.png"))
    H, W = official.shape
    rows = ((np.arange(H) + 0.5) * classes.shape[0] / H).astype(int)
    cols = ((np.arange(W) + 0.5) * classes.shape[1] / W).astype(int)
    assert np.array_equal(lut[classes[np.ix_(rows, cols)]], official)


def test_2016_part_of_comes_from_instance_overlap(tmp_path: Path) -> None:
    root = tmp_path / "ADE20K_2016_07_26"
    make_2016_release(root)
    folder = root / "images" / "training" / "a" / "abbey"
    seg = np.asarray(Image.open(folder / "ADE_train_00000970_seg.png").convert("RGB"))
    classes = seg[..., 0].astype(int) // 10 * 256 + seg[..., 1]
    # a part (class 3050, "window" in 2016 numbering terms here) drawn inside the buildings
    part = np.zeros_like(seg)
    inside = np.argwhere(classes == 312)[:500]
    part[inside[:, 0], inside[:, 1]] = (3050 // 256 * 10, 3050 % 256, 7)
    Image.fromarray(part).save(folder / "ADE_train_00000970_parts_1.png")
    sample = ADE20K.from_config({"root": str(root)}).load(0)
    assert [(e.part, e.parent_category, e.parent, e.pixels) for e in sample.part_of] == [
        (3050, "object", 312, 500)
    ]


# -- bad input -----------------------------------------------------------------------------


def test_truncated_jpeg_is_a_sample_error(ade_copy: Path) -> None:
    jpg = next(ade_copy.rglob("ADE_train_00016869.jpg"))
    jpg.write_bytes(jpg.read_bytes()[:50_000])
    adapter = ADE20K.from_config({"root": str(ade_copy)})
    with pytest.raises(SampleError, match=r"ADE_train_00016869\.jpg.*truncated"):
        adapter.load(0)
    assert adapter.load(1).image.shape == (1650, 2200, 3)  # the other sample is unaffected


def test_seg_of_another_size_is_a_sample_error(ade_copy: Path) -> None:
    seg = next(ade_copy.rglob("ADE_train_00016900_seg.png"))
    Image.open(seg).resize((1100, 825), Image.Resampling.NEAREST).save(seg)
    adapter = ADE20K.from_config({"root": str(ade_copy)})
    with pytest.raises(
        SampleError, match=r"_seg\.png: mask is 1100×825 but the image .* 2200×1650"
    ):
        adapter.load(1)


def test_json_that_does_not_parse_is_a_sample_error(ade_copy: Path) -> None:
    path = next(ade_copy.rglob("ADE_train_00016900.json"))
    path.write_text(path.read_text()[:1000])
    adapter = ADE20K.from_config({"root": str(ade_copy)})
    adapter.check()  # the source is still usable
    with pytest.raises(SampleError, match=r"ADE_train_00016900\.json: not valid JSON"):
        adapter.load(1)
    assert adapter.load(0).pixel["object"].shape[0] == 1


def test_missing_2016_index_is_a_source_error(tmp_path: Path) -> None:
    root = tmp_path / "ADE20K_2016_07_26"
    make_2016_release(root)
    (root / "index_ade20k.mat").unlink()
    with pytest.raises(SourceError, match="does not look like a known release"):
        ADE20K.from_config({"root": str(root)}).check()


def test_missing_folder_names_the_download(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"(?s)does not exist.*registration"):
        ADE20K.from_config({"root": str(tmp_path / "nowhere")}).check()


def test_unknown_class_value_is_a_sample_error(ade_copy: Path) -> None:
    path = next(ade_copy.rglob("ADE_train_00016900.json"))
    ann = json.loads(path.read_text())
    # drop the umbrella (only in this image) from the json: its class value becomes unknown
    objs = ann["annotation"]["object"]
    ann["annotation"]["object"] = [o for o in objs if o["name_ndx"] != 2901]
    path.write_text(json.dumps(ann))
    adapter = ADE20K.from_config({"root": str(ade_copy)})
    with pytest.raises(SampleError, match=r"class values \[2901\] are not in"):
        adapter.load(1)


def test_part_level_files_are_read_while_they_exist(ade: ADE20K) -> None:
    counts = defaultdict(int)
    for i in range(len(ade)):
        counts[i] = len(ade.load(i).pixel["part"])
    assert dict(counts) == {0: 2, 1: 1}


class TestADE20KContract(AdapterContract):
    """The 2021 release sample (both images: the first and the last)."""

    expected_len = len(ADE_IDS)
    manifest_required = True

    def make_adapter(self) -> Adapter:
        return ADE20K.from_config({"root": str(ADE_ROOT)})


class TestADE20KPartsOnlyContract(AdapterContract):
    """Parts without objects: no part-of edge may name the object category."""

    expected_len = len(ADE_IDS)

    def make_adapter(self) -> Adapter:
        return ADE20K.from_config({"root": str(ADE_ROOT)}, categories=["part"])


@pytest.fixture(scope="module")
def release_2016(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ade2016") / "ADE20K_2016_07_26"
    make_2016_release(root)
    return root


class TestADE20K2016Contract(AdapterContract):
    """The 2016 layout (index_ade20k.mat) around a real _seg.png."""

    expected_len = 1
    manifest_required = True

    def make_adapter(self, release_2016: Path) -> Adapter:
        return ADE20K.from_config({"root": str(release_2016)})
