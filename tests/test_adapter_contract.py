"""The adapter contract (``broden.adapters.testing``) on toy adapters: a sound one passes it
whole, and each check fails on a toy broken in the way it guards against, with a message
naming the adapter, so no check can pass vacuously.

The toy source stands for one that would read this folder (it draws its samples)::

    toy/
      images/toy_0000.png ...
      labels.csv                    id,name,category
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pydantic import BaseModel

from broden.adapters import (
    Adapter,
    AdapterOptions,
    PartOf,
    Prebuilt,
    SampleError,
    SourceError,
    SourceSample,
)
from broden.adapters.testing import AdapterContract, draws_folder_tree


class ToyOptions(AdapterOptions):
    count: int = 6
    size: int = 8


class Toy(Adapter):
    """Cats and dogs with legs on a street: every kind of label, and a part_of edge."""

    name = "toy"
    kinds = {"part": "pixel", "object": "pixel", "scene": "image"}
    Options = ToyOptions
    options: ToyOptions
    #: the indices load() was called with, over all toys
    loaded: ClassVar[list[int]] = []

    def vocabulary(self) -> dict[str, dict[int, list[str]]]:
        return {
            "part": {1: ["leg"]},
            "object": {1: ["cat"], 2: ["dog", "hound"]},
            "scene": {1: ["street"]},
        }

    def __len__(self) -> int:
        return self.options.count

    def source_id(self, index: int) -> str:
        return f"images/toy_{index:04d}.png"

    def load(self, index: int) -> SourceSample:
        Toy.loaded.append(index)
        n = self.options.size
        objects = np.zeros((1, n, n), np.uint8)
        objects[0, : n // 2] = 1
        objects[0, n // 2 :] = 2
        parts = np.zeros((1, n, n), np.uint16)
        parts[0, :2, :2] = 1
        return SourceSample(
            self.source_id(index),
            np.zeros((n, n, 3), np.uint8),
            pixel={"part": parts, "object": objects},
            image_labels={"scene": [1]},
            part_of=[PartOf("part", 1, "object", 1, 4)],
        )


class TestToyContract(AdapterContract):
    expected_len = 6

    def make_adapter(self) -> Adapter:
        return Toy.from_config({})


def test_the_contract_loads_the_first_samples_and_the_last(request: pytest.FixtureRequest) -> None:
    class Contract(AdapterContract):
        def make_adapter(self) -> Adapter:
            return Toy.from_config({})

    Toy.loaded.clear()
    contract = Contract()
    contract.test_load_gives_valid_samples_of_their_id(request)
    contract.test_sample_labels_are_declared(request)  # reuses the samples loaded above
    assert Toy.loaded == [0, 1, 2, 5]
    Toy.loaded.clear()
    Contract.samples_checked = 10
    Contract().test_part_of_edges_are_declared(request)  # the cached samples: no new load
    assert Toy.loaded == []


def test_fixtures_are_passed_to_make_adapter_by_name(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    seen = []

    class Contract(AdapterContract):
        def make_adapter(self, tmp_path: Path) -> Adapter:
            seen.append(tmp_path)
            return Toy.from_config({})

    Contract().test_samples_have_distinct_ids(request)
    Contract().test_vocabulary_covers_every_category(request)
    assert seen == [tmp_path]  # the same fixture value: made once


# -- broken toys --------------------------------------------------------------------------


def broken(**overrides: Any) -> type[Toy]:
    """A toy with some class attributes or methods replaced."""
    return type("Broken", (Toy,), overrides)


def sample(adapter: Toy, index: int, **changes: Any) -> SourceSample:
    s = Toy.load(adapter, index)
    for key, value in changes.items():
        setattr(s, key, value)
    return s


class NotOptions(BaseModel):
    count: int = 6
    size: int = 8


ORDER = ("scene", "object")
LATE = Prebuilt(image_size=16, label_size=4, concepts=[])

#: (the broken toy, contract attributes, the check that must fail, what its message says)
CASES: list[tuple[str, type[Adapter], dict[str, Any], str, str]] = [
    ("name with a space", broken(name="my toy"), {},
     "test_declares_a_registered_name_and_options", "non-empty str without spaces"),
    ("a registered name of another class", broken(name="dtd"), {},
     "test_declares_a_registered_name_and_options",
     r"registry's adapter 'dtd' is broden\.adapters\.dtd\.DTD"),
    ("options that are no AdapterOptions", broken(Options=NotOptions), {},
     "test_declares_a_registered_name_and_options", "must be an AdapterOptions subclass"),
    ("an unknown kind", broken(kinds={"object": "mask"}), {},
     "test_declares_its_kinds_and_categories", "kinds outside"),
    ("no kinds", broken(kinds={}), {},
     "test_declares_its_kinds_and_categories", "`kinds` is empty"),
    ("categories out of order", broken(categories=property(lambda self: ORDER)), {},
     "test_declares_its_kinds_and_categories", "in that order"),
    ("a manifest without the release in the docstring", broken(manifest_name="dtd"), {},
     "test_module_docstring_names_its_release", r"must name the release .*dtd-r1\.0\.1"),
    ("a manifest that does not exist", broken(manifest_name="no_such_source"), {},
     "test_manifest_loads_with_license_and_citation", "its manifest does not load"),
    ("no manifest where one is required", Toy, {"manifest_required": True},
     "test_manifest_loads_with_license_and_citation", "`manifest_name` is not set"),
    ("check() that fails", broken(check=lambda self: (_ for _ in ()).throw(SourceError("gone"))),
     {}, "test_check_passes_and_describe_is_json", r"check\(\) fails on the fixture: .*gone"),
    ("describe() that is no JSON",
     broken(describe=lambda self: {**Toy.describe(self), "root": Path("/x")}), {},
     "test_check_passes_and_describe_is_json", "is not JSON"),
    ("a category missing from the vocabulary",
     broken(vocabulary=lambda self: {"object": {1: ["cat"]}, "scene": {1: ["street"]}}), {},
     "test_vocabulary_covers_every_category", r"no entry for \['part'\]"),
    ("an empty name list",
     broken(vocabulary=lambda self: {**Toy.vocabulary(self), "object": {1: []}}), {},
     "test_vocabulary_covers_every_category", "non-empty lists of non-empty str"),
    ("label id 0 in the vocabulary",
     broken(vocabulary=lambda self: {**Toy.vocabulary(self), "scene": {0: ["street"]}}), {},
     "test_vocabulary_covers_every_category", r"scene ids \[0\] are not integers > 0"),
    ("no samples", broken(__len__=lambda self: 0), {},
     "test_samples_have_distinct_ids", r"len\(\) is 0"),
    ("no samples to load", broken(__len__=lambda self: 0), {},
     "test_part_of_edges_are_declared", "no sample was loaded"),
    ("another number of samples than the fixture's", Toy, {"expected_len": 3},
     "test_samples_have_distinct_ids", r"len\(\) is 6, the fixture has 3"),
    ("repeated source ids", broken(source_id=lambda self, i: f"toy_{i % 4}"), {},
     "test_samples_have_distinct_ids", r"repeats \['toy_0', 'toy_1'\]"),
    ("a sample of another id", broken(load=lambda self, i: sample(self, i, source_id="x")), {},
     "test_load_gives_valid_samples_of_their_id", r"load\(0\)\.source_id is 'x'"),
    ("a label map of another size than the image",
     broken(load=lambda self, i: sample(self, i, pixel={"object": np.zeros((1, 8, 9), int)})),
     {}, "test_load_gives_valid_samples_of_their_id", r"load\(0\) is invalid: object label map"),
    ("a release sample at the wrong size", broken(prebuilt=lambda self: LATE), {},
     "test_load_gives_valid_samples_of_their_id", r"the release's images are \(16, 16, 3\)"),
    ("load() that returns no SourceSample", broken(load=lambda self, i: {"image": None}), {},
     "test_load_gives_valid_samples_of_their_id", "not a SourceSample"),
    ("load() that fails",
     broken(load=lambda self, i: (_ for _ in ()).throw(SampleError("corrupt"))), {},
     "test_sample_labels_are_declared", r"load\(0\) fails: corrupt"),
    ("a pixel id outside the vocabulary",
     broken(load=lambda self, i: sample(self, i, pixel={"object": np.full((1, 8, 8), 7)})), {},
     "test_sample_labels_are_declared", r"object ids \[7\] are not in vocabulary\(\)"),
    ("an image label outside the vocabulary",
     broken(load=lambda self, i: sample(self, i, image_labels={"scene": [1, 5]})), {},
     "test_sample_labels_are_declared", r"scene image labels \[5\] not in vocabulary\(\)"),
    ("pixels of an undeclared category",
     broken(load=lambda self, i: sample(self, i, pixel={"material": np.ones((1, 8, 8), int)})),
     {}, "test_sample_labels_are_declared", r"pixel maps of \['material'\]"),
    ("pixels of a whole-image category",
     broken(load=lambda self, i: sample(self, i, pixel={"scene": np.ones((1, 8, 8), int)})),
     {}, "test_sample_labels_are_declared", r"pixel maps of \['scene'\]"),
    ("image labels of a pixel category",
     broken(load=lambda self, i: sample(self, i, image_labels={"object": [1]})), {},
     "test_sample_labels_are_declared", r"image labels of \['object'\]"),
    ("a part_of edge to an undeclared category",
     broken(load=lambda self, i: sample(self, i, part_of=[PartOf("part", 1, "material", 1, 3)])),
     {}, "test_part_of_edges_are_declared", "names category 'material'"),
    ("a part_of edge to an unknown id",
     broken(load=lambda self, i: sample(self, i, part_of=[PartOf("part", 1, "object", 9, 3)])),
     {}, "test_part_of_edges_are_declared", r"names object id 9, not in vocabulary\(\)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("adapter_cls", "attrs", "check", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_check_fails_on_a_broken_toy(
    request: pytest.FixtureRequest,
    adapter_cls: type[Adapter],
    attrs: dict[str, Any],
    check: str,
    message: str,
) -> None:
    def make_adapter(self: AdapterContract) -> Adapter:
        return adapter_cls.from_config({})

    contract = type("Contract", (AdapterContract,), {"make_adapter": make_adapter, **attrs})()
    with pytest.raises(AssertionError, match=message) as failure:
        getattr(contract, check)(request)
    named = f"adapter {adapter_cls.name!r} ({adapter_cls.__module__}.{adapter_cls.__qualname__})"
    assert str(failure.value).startswith(named), "the message names the adapter"


def in_module(name: str, doc: str | None, monkeypatch: pytest.MonkeyPatch) -> type[Toy]:
    """A toy defined in a module ``name`` whose docstring is ``doc``."""
    monkeypatch.setitem(sys.modules, name, types.ModuleType(name, doc))
    return type("Undocumented", (Toy,), {"__module__": name})


@pytest.mark.parametrize(
    "doc",
    [
        None,
        "",
        "A source of toys.\n\nPoint ``root`` at the folder with images/ and labels.csv.\n",
        "Toys.\n\n    root/\n    images/\n",  # a folder line, nothing indented below it
    ],
    ids=["none", "empty", "prose", "flat"],
)
def test_a_module_docstring_without_a_tree_fails(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, doc: str | None
) -> None:
    cls = in_module("toy_without_tree", doc, monkeypatch)

    class Contract(AdapterContract):
        def make_adapter(self) -> Adapter:
            return cls.from_config({})

    with pytest.raises(AssertionError, match=r"toy_without_tree\.Undocumented.*must draw"):
        Contract().test_module_docstring_draws_the_folder_tree(request)
    assert not draws_folder_tree(doc)


@pytest.mark.parametrize(
    "doc",
    [
        "Toys::\n\n    toy/\n      images/toy_0000.png\n",
        "Toys::\n\n    root:  toys/Images/        toys.tar\n             0001.jpg ...\n",
        "Toys::\n\n    toy\n    ├── images\n    └── labels.csv\n",
    ],
    ids=["listing", "keyed", "tree"],
)
def test_a_drawn_tree_passes(doc: str) -> None:
    assert draws_folder_tree(doc)


def test_every_check_of_the_contract_is_tested_to_fail() -> None:
    checks = {n for n in dir(AdapterContract) if n.startswith("test_")}
    failing = {case[3] for case in CASES} | {"test_module_docstring_draws_the_folder_tree"}
    assert checks == failing
