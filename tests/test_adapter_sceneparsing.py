"""The ade20k_sceneparsing adapter on real ADEChallengeData2016 validation samples
(tests/data/ade20k_sceneparsing, see its PROVENANCE.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from broden.adapters import Adapter, SampleError, SourceError
from broden.adapters.ade20k_sceneparsing import ADE20KSceneParsing
from broden.adapters.testing import AdapterContract

ROOT = Path(__file__).parent / "data" / "ade20k_sceneparsing" / "ADEChallengeData2016"
VAL = ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]


def make(root: Path = ROOT, categories: list[str] | None = None) -> ADE20KSceneParsing:
    adapter = ADE20KSceneParsing.from_config({"root": root, "splits": ["validation"]}, categories)
    adapter.check()
    assert isinstance(adapter, ADE20KSceneParsing)
    return adapter


@pytest.fixture(scope="module")
def adapter() -> ADE20KSceneParsing:
    return make()


def test_samples_are_the_split_photos_sorted(adapter: ADE20KSceneParsing) -> None:
    assert [adapter.source_id(i) for i in range(len(adapter))] == [
        f"images/validation/{v}.jpg" for v in VAL
    ]


@pytest.mark.parametrize("index", range(3))
def test_object_ids_and_pixel_counts_equal_the_annotation_png(
    adapter: ADE20KSceneParsing, index: int
) -> None:
    png = np.asarray(Image.open(ROOT / "annotations" / "validation" / f"{VAL[index]}.png"))
    sample = adapter.load(index)
    sample.validate()
    objects = sample.pixel["object"]
    assert objects.shape == (1, *png.shape)
    assert np.array_equal(objects[0], png)
    ids, counts = np.unique(objects, return_counts=True)
    want_ids, want_counts = np.unique(png, return_counts=True)
    assert ids.tolist() == want_ids.tolist() and counts.tolist() == want_counts.tolist()
    assert sample.image.shape[:2] == png.shape


def test_names_come_from_object_info_with_synonyms(adapter: ADE20KSceneParsing) -> None:
    names = adapter.vocabulary()["object"]
    assert len(names) == 150
    assert names[1] == ["wall"]
    assert names[2] == ["building", "edifice"]
    assert names[8] == ["bed"]  # "bed " in the file: stripped
    assert names[13] == ["person", "individual", "someone", "somebody", "mortal", "soul"]


def test_csv_object_info_alone_is_refused_with_the_reason(tmp_path: Path) -> None:
    # The devkit's objectInfo150.csv joins words and synonyms alike with ';': the names
    # of multi-word classes cannot be recovered from it.
    csv_names = (ROOT / "objectInfo150.csv").read_text().splitlines()
    assert "137,0.0003,528,65,0,traffic;light;traffic;signal;stoplight" in csv_names
    root = tmp_path / "ADEChallengeData2016"
    shutil.copytree(ROOT, root)
    (root / "objectInfo150.txt").unlink()
    with pytest.raises(SourceError, match=r"objectInfo150\.txt is missing \(only objectInfo150"):
        make(root)


def test_scenes_come_from_scene_categories(adapter: ADE20KSceneParsing) -> None:
    scenes = adapter.vocabulary()["scene"]
    # the vocabulary is the whole file's sorted scene names, not only this split's
    assert scenes == {1: ["abbey"], 2: ["access_road"], 3: ["airport_terminal"]}
    labels = [adapter.load(i).image_labels["scene"] for i in range(3)]
    assert labels == [[1], [1], [2]]


def test_object_only_needs_no_scene_file(tmp_path: Path) -> None:
    root = tmp_path / "ADEChallengeData2016"
    shutil.copytree(ROOT, root)
    (root / "sceneCategories.txt").unlink()
    with pytest.raises(SourceError, match=r"sceneCategories\.txt is missing"):
        make(root)
    sample = make(root, ["object"]).load(0)
    assert "scene" not in sample.image_labels and sample.pixel["object"].any()


def test_missing_split_folder_is_a_source_error() -> None:
    adapter = ADE20KSceneParsing.from_config({"root": ROOT})  # default: both splits
    with pytest.raises(SourceError, match=r"images/training is missing \(split 'training'\)"):
        adapter.check()


def test_missing_root_is_a_source_error(tmp_path: Path) -> None:
    adapter = ADE20KSceneParsing.from_config({"root": tmp_path / "nowhere"})
    with pytest.raises(SourceError, match="(?s)does not exist.*ADEChallengeData2016.zip"):
        adapter.check()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("size", r"ADE_val_00000001\.png: annotation is 100×50 but the image .* \(W×H\)"),
        ("rgb", r"ADE_val_00000001\.png: expected a grey \(mode L\) 8-bit annotation"),
        ("value", r"ADE_val_00000001\.png: class values \[200\] are not in objectInfo150"),
    ],
)
def test_bad_annotations_are_sample_errors(tmp_path: Path, damage: str, message: str) -> None:
    root = tmp_path / "ADEChallengeData2016"
    shutil.copytree(ROOT, root)
    png = root / "annotations" / "validation" / "ADE_val_00000001.png"
    labels = np.asarray(Image.open(png))
    if damage == "size":
        Image.fromarray(labels[:50, :100]).save(png)
    elif damage == "rgb":
        Image.fromarray(np.stack([labels] * 3, axis=-1)).save(png)
    else:
        bad = labels.copy()
        bad[0, 0] = 200
        Image.fromarray(bad).save(png)
    adapter = make(root)
    with pytest.raises(SampleError, match=message):
        adapter.load(0)
    adapter.load(1)


def test_build_stores_sceneparsing_objects_and_scenes(tmp_path: Path) -> None:
    from broden.build import build
    from broden.config import parse_config
    from broden.store import open_store

    config = parse_config(
        {
            "image_size": 32,
            "min_frequency": 1,
            "min_coverage": 0.0,
            "colors": False,
            "sources": [
                {"adapter": "ade20k_sceneparsing", "root": str(ROOT), "splits": ["validation"]}
            ],
        }
    )
    build(config, tmp_path / "s.zarr", progress=False)
    store = open_store(tmp_path / "s.zarr")
    assert len(store) == 3
    by_name = {c.name: c for c in store.concepts}
    assert by_name["wall"].category == "object" and by_name["wall"].frequency == 3
    assert by_name["abbey-s"].frequency == 2 and by_name["abbey-s"].category == "scene"
    assert "edifice" in by_name["building"].synonyms or by_name["building"].synonyms == []
    _, image = store.labels(2)
    assert image["scene"][0] == by_name["access_road-s"].id


class TestSceneParsingContract(AdapterContract):
    expected_len = len(VAL)
    manifest_required = True

    def make_adapter(self) -> Adapter:
        return ADE20KSceneParsing.from_config({"root": ROOT, "splits": ["validation"]})
