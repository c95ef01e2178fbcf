"""ADE20K SceneParsing benchmark (ADEChallengeData2016): 150 object classes and scenes.

Written against the release ``ADEChallengeData2016.zip`` of the MIT Scene Parsing
Benchmark (devkit CSAILVision/sceneparsing). ``root`` is the unpacked folder::

    ADEChallengeData2016/
      images/training/ADE_train_00000001.jpg ...      20,210 photos
      images/validation/ADE_val_00000001.jpg ...      2,000 photos
      annotations/training/ADE_train_00000001.png ... mode L uint8, same size as the photo:
      annotations/validation/ADE_val_00000001.png ...   0 = other/unlabeled, 1..150 = class
      objectInfo150.txt      tab-separated "Idx Ratio Train Val Name" ("building, edifice")
      objectInfo150.csv      (devkit only; not read, see :func:`read_object_info`)
      sceneCategories.txt    "ADE_train_00000001 airport_terminal", one line per image

Categories: ``object`` (per pixel; local id = the class Idx 1..150, names = the Name
column of ``objectInfo150.txt`` split on "," into synonyms, preferred first) and
``scene`` (whole image; local ids 1.. number the sorted distinct scene names of the
whole ``sceneCategories.txt``, as Broden numbered ADE20K scenes). The config key
``splits`` (default ``[training, validation]``) picks the folders; samples are each
split's photos sorted by name, splits in the given order. ``source_id`` is the photo's
path relative to ``root``. An image without a line in ``sceneCategories.txt`` simply
has no scene label.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from broden.adapters.base import Adapter, RootOptions, SampleError, SourceError, SourceSample
from broden.adapters.decode import read_image, read_png, require_same_size
from broden.adapters.files import file_text
from broden.adapters.manifest import load_manifest

Split = Literal["training", "validation"]
SPLITS: tuple[Split, ...] = ("training", "validation")


class SceneParsingOptions(RootOptions):
    splits: list[Split] = Field(
        default_factory=lambda: list(SPLITS),
        description="which splits to read, in this order (the test split has no annotations)",
    )

    @field_validator("splits")
    @classmethod
    def _distinct(cls, v: list[Split]) -> list[Split]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"splits must be a non-empty list without repeats, got {v}")
        return v


@dataclass
class _Index:
    images: list[str]  # relative to root, posix
    names: dict[int, list[str]]  # class Idx -> names
    scenes: list[str]  # sorted; local id = position + 1
    scene_of: dict[str, str]  # image stem -> scene


def read_object_info(root: Path) -> dict[int, list[str]]:
    """Class Idx → names (synonyms, preferred first) from ``objectInfo150.txt``.

    The devkit's ``objectInfo150.csv`` cannot stand in for it: its Name column joins
    the words of a name with ";" just like the synonyms (``traffic;light;traffic;signal;
    stoplight`` for "traffic light, traffic signal, stoplight"), so 41 of the 150 classes
    would get wrong names; a folder holding only the .csv is refused with that reason.
    """
    txt, csv_path = root / "objectInfo150.txt", root / "objectInfo150.csv"
    if not txt.exists():
        why = (
            f"only {csv_path.name} is there, whose Name column joins the words of a name with "
            "';' like its synonyms ('traffic;light;traffic;signal;stoplight'), so the names "
            "cannot be recovered from it"
            if csv_path.exists()
            else "it holds the class names"
        )
        raise SourceError(
            f"ADE20K SceneParsing: {txt} is missing ({why}); it ships in "
            "ADEChallengeData2016.zip and in the CSAILVision/sceneparsing devkit"
        )
    try:
        text = file_text(txt)
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"ADE20K SceneParsing: cannot read {txt} ({e})") from None
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    header = [h.strip() for h in rows[0]] if rows else []
    if "Idx" not in header or "Name" not in header:
        raise SourceError(
            f"ADE20K SceneParsing: {txt}: expected a tab-separated header with Idx and Name "
            f"columns, got {header}"
        )
    i_idx, i_name = header.index("Idx"), header.index("Name")
    names: dict[int, list[str]] = {}
    for lineno, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            idx = int(row[i_idx])
            synonyms = [n.strip() for n in row[i_name].split(",") if n.strip()]
        except (IndexError, ValueError):
            raise SourceError(f"ADE20K SceneParsing: {txt}:{lineno}: malformed row {row}") from None
        if not 1 <= idx <= 255 or idx in names or not synonyms:
            raise SourceError(
                f"ADE20K SceneParsing: {txt}:{lineno}: bad or repeated class Idx {idx} or "
                "empty name"
            )
        names[idx] = synonyms
    if not names:
        raise SourceError(f"ADE20K SceneParsing: {txt} lists no classes")
    return names


def read_scene_categories(path: Path) -> dict[str, str]:
    """Image stem → scene from ``sceneCategories.txt``."""
    try:
        text = file_text(path)
    except FileNotFoundError:
        raise SourceError(
            f"ADE20K SceneParsing: {path} is missing (the scene labels); leave `scene` out of "
            "the source's categories to build without it"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"ADE20K SceneParsing: cannot read {path} ({e})") from None
    scenes: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 2:
            raise SourceError(
                f"ADE20K SceneParsing: {path}:{lineno}: expected '<image> <scene>', got {line!r}"
            )
        scenes[tokens[0]] = tokens[1]
    return scenes


class ADE20KSceneParsing(Adapter):
    """ADEChallengeData2016: 150-class object maps and scene labels."""

    name = "ade20k_sceneparsing"
    kinds = {"object": "pixel", "scene": "image"}
    Options = SceneParsingOptions
    manifest_name = "ade20k_sceneparsing"
    options: SceneParsingOptions

    @cached_property
    def _index(self) -> _Index:
        return self._build_index()

    def _build_index(self) -> _Index:
        root = self.options.root
        manifest = load_manifest(self.manifest_name or self.name)
        manifest.check_layout(root)
        images: list[str] = []
        for split in self.options.splits:
            for kind in ("images", "annotations"):
                if not (root / kind / split).is_dir():
                    raise SourceError(
                        f"{manifest.title}: {root / kind / split} is missing (split {split!r}); "
                        f"set `splits:` to the splits you have.\n{manifest.download}"
                    )
            jpgs = sorted(p.name for p in (root / "images" / split).glob("*.jpg"))
            if not jpgs:
                raise SourceError(f"{manifest.title}: no .jpg photos in {root / 'images' / split}")
            images.extend(f"images/{split}/{name}" for name in jpgs)
        names = read_object_info(root)
        scene_of: dict[str, str] = {}
        if "scene" in self.categories:
            scene_of = read_scene_categories(root / "sceneCategories.txt")
        return _Index(images, names, sorted(set(scene_of.values())), scene_of)

    # -- adapter duties -------------------------------------------------------------------

    def check(self) -> None:
        _ = self._index  # building the index reads and checks the source

    def release_version(self) -> str | None:
        return "ADEChallengeData2016"

    def vocabulary(self) -> dict[str, dict[int, list[str]]]:
        idx = self._index
        vocab: dict[str, dict[int, list[str]]] = {}
        if "object" in self.categories:
            vocab["object"] = dict(idx.names)
        if "scene" in self.categories:
            vocab["scene"] = {i + 1: [s] for i, s in enumerate(idx.scenes)}
        return vocab

    def __len__(self) -> int:
        return len(self._index.images)

    def source_id(self, index: int) -> str:
        return self._index.images[index]

    @cached_property
    def _scene_ids(self) -> dict[str, int]:
        return {s: i + 1 for i, s in enumerate(self._index.scenes)}

    def load(self, index: int) -> SourceSample:
        idx = self._index
        rel = idx.images[index]
        jpg = self.options.root / rel
        image = read_image(jpg)
        sample = SourceSample(source_id=rel, image=image)
        if "object" in self.categories:
            _, split, name = rel.split("/")
            png = self.options.root / "annotations" / split / (name[: -len(".jpg")] + ".png")
            labels = read_png(png)
            if labels.ndim != 2 or labels.dtype != np.uint8:
                raise SampleError(
                    f"{png}: expected a grey (mode L) 8-bit annotation, got shape "
                    f"{labels.shape} dtype {labels.dtype}"
                )
            require_same_size(png, "annotation", labels.shape, jpg.name, image.shape)
            present = np.flatnonzero(np.bincount(labels.ravel()))
            unknown = [int(v) for v in present if v and v not in idx.names]
            if unknown:
                raise SampleError(
                    f"{png}: class values {unknown[:5]} are not in objectInfo150 "
                    f"(1..{max(idx.names)})"
                )
            sample.pixel["object"] = labels[None]
        if "scene" in self.categories:
            scene = idx.scene_of.get(Path(rel).stem)
            if scene is not None:
                sample.image_labels["scene"] = [self._scene_ids[scene]]
        return sample
