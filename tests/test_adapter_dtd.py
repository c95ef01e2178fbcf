"""DTD adapter on DTD-format data (the generated sample in samples/dtd)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broden.adapters import Adapter, SampleError, SourceError
from broden.adapters.dtd import DTD
from broden.adapters.testing import AdapterContract
from tests.conftest import SAMPLES


def test_vocabulary_is_the_sorted_set_of_joint_labels() -> None:
    dtd = DTD.from_config({"root": str(SAMPLES / "dtd")})
    dtd.check()
    names = [n[0] for n in dtd.vocabulary()["texture"].values()]
    assert names == sorted(names) and len(names) == 7
    assert "polka-dotted" in names


def test_joint_labels_are_whole_image_labels_key_attribute_first() -> None:
    dtd = DTD.from_config({"root": str(SAMPLES / "dtd")})
    vocab = dtd.vocabulary()["texture"]
    lines = (SAMPLES / "dtd" / "labels" / "labels_joint_anno.txt").read_text().splitlines()
    for i, line in enumerate(lines):
        rel, *labels = line.split()
        sample = dtd.load(i)
        assert sample.source_id == rel
        assert [vocab[j][0] for j in sample.image_labels["texture"]] == labels
        assert sample.pixel == {} and sample.image.dtype.name == "uint8"


def test_listed_but_missing_image_is_a_sample_error(dtd_copy: Path) -> None:
    (dtd_copy / "images" / "grid" / "grid_0001.jpg").unlink()
    dtd = DTD.from_config({"root": str(dtd_copy)})
    index = [dtd.source_id(i) for i in range(len(dtd))].index("grid/grid_0001.jpg")
    with pytest.raises(SampleError, match=r"grid_0001\.jpg: file is missing"):
        dtd.load(index)


def test_malformed_annotation_file_is_a_source_error(dtd_copy: Path) -> None:
    anno = dtd_copy / "labels" / "labels_joint_anno.txt"
    anno.write_text(anno.read_text() + "this is not a listing\n")
    with pytest.raises(SourceError, match=r"labels_joint_anno\.txt:25: expected"):
        DTD.from_config({"root": str(dtd_copy)}).check()


def test_missing_annotation_file_is_a_source_error(dtd_copy: Path) -> None:
    (dtd_copy / "labels" / "labels_joint_anno.txt").unlink()
    with pytest.raises(
        SourceError, match=r"(?s)does not look like a known release.*dtd-r1\.0\.1\.tar\.gz"
    ):
        DTD.from_config({"root": str(dtd_copy)}).check()


class TestDTDContract(AdapterContract):
    expected_len = 24
    manifest_required = True

    def make_adapter(self) -> Adapter:
        return DTD.from_config({"root": str(SAMPLES / "dtd")})
