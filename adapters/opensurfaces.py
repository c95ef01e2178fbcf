"""OpenSurfaces (release 0): materials per pixel, and optionally objects and scenes.

Written against ``opensurfaces-release-0.zip`` after running the release's own
``process_opensurfaces_release_0.py`` in the unpacked folder, which downloads the
photos and renders the label images. ``root`` is that folder::

    opensurfaces/
      photos.csv                   photo_id,scene_category_name,scene_category_score,...
      photos/<photo_id>.jpg        the original Flickr photo
      photos-labels/<photo_id>.png RGB: R = substance (material), G = name (object),
                                   B = scene; 0 = unlabeled. Rendered at height 1024,
                                   width int(1024 · aspect ratio) of the photo.
      label-substance-colors.csv   substance_id,substance_name,red_color
      label-name-colors.csv        name_id,name_name,green_color     (object only)
      label-scene-colors.csv       scene_category_id,scene_category_name,blue_color (not read)
      shapes.csv, shapes-*/        (not read)

Categories: ``material`` (per pixel, the R channel; the default), ``object`` (per
pixel, the G channel) and ``scene`` (whole image, ``scene_category_name`` of
``photos.csv``). Local ids are the channel values of the color tables (``red_color``,
``green_color``); scene ids 1.. number the sorted distinct scene names of
``photos.csv`` (an empty name, or one starting with "~", is unlabeled), as Broden's
``osseg.py`` did. Names are split on "/" into synonyms, stripped, lower-cased, with
" - " → "-" (``Paper/tissue`` → ["paper", "tissue"], ``Plastic - clear`` →
["plastic-clear"]).

Broden used only the materials of OpenSurfaces ("not balanced in scene and object
types"): ``categories: [material]`` reproduces it, and it is the default here.

Samples are the rows of ``photos.csv`` in file order; ``source_id`` is
``photos/<photo_id>.jpg``. The label image has the photo's aspect ratio but usually not
its size (the script renders it 1024 high): it is resampled to the photo's size by
nearest neighbour (colors are then computed on the full photo, as in Broden). A label
image whose aspect ratio differs from the photo's, or a channel value missing from its
color table, fails the sample.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from broden.adapters.base import (
    Adapter,
    RootOptions,
    SampleError,
    SourceError,
    SourceSample,
)
from broden.adapters.decode import read_image, read_png_rgb
from broden.adapters.files import open_text
from broden.adapters.manifest import load_manifest

TITLE = "OpenSurfaces"


def split_names(name: str) -> list[str]:
    """``"Paper/tissue"`` → ``["paper", "tissue"]`` (Broden's ``osseg.norm_name``)."""
    parts = (p.replace(" - ", "-").strip().lower() for p in name.split("/"))
    return [p for p in parts if p]


def normalize_scene(name: str) -> str | None:
    """A photos.csv scene name, or None for unlabeled (empty, "None" or "~...")."""
    name = name.replace(" - ", "-").strip()
    if not name or name == "None" or name.startswith("~"):
        return None
    return name


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with open_text(path) as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise SourceError(
                    f"{TITLE}: {path}: missing columns {missing} (header: {reader.fieldnames})"
                )
            return list(reader)
    except FileNotFoundError:
        raise SourceError(
            f"{TITLE}: {path} is missing.\n{load_manifest('opensurfaces').download}"
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SourceError(f"{TITLE}: cannot read {path} ({e})") from None


def read_color_table(path: Path, name_column: str, color_column: str) -> dict[int, str]:
    """A ``label-*-colors.csv`` table: channel value → raw name."""
    table: dict[int, str] = {}
    for lineno, row in enumerate(_read_csv(path, (name_column, color_column)), 2):
        try:
            value = int(row[color_column])
        except (TypeError, ValueError):
            raise SourceError(
                f"{TITLE}: {path}:{lineno}: {color_column} {row[color_column]!r} is not a number"
            ) from None
        if not 1 <= value <= 255 or value in table:
            raise SourceError(
                f"{TITLE}: {path}:{lineno}: {color_column} {value} is out of 1..255 or repeated"
            )
        name = (row[name_column] or "").strip()
        if not name:
            raise SourceError(f"{TITLE}: {path}:{lineno}: empty {name_column}")
        table[value] = name
    return table


@dataclass
class _Index:
    photo_ids: list[str]
    scenes: list[str | None]  # per photo
    materials: dict[int, str]
    objects: dict[int, str]
    scene_names: list[str]  # sorted; local id = position + 1


class OpenSurfaces(Adapter):
    """OpenSurfaces release 0: materials (R), objects (G), scenes (photos.csv)."""

    name = "opensurfaces"
    kinds = {"material": "pixel", "object": "pixel", "scene": "image"}
    manifest_name = "opensurfaces"
    options: RootOptions

    def __init__(self, options: RootOptions, categories: Sequence[str] | None = None):
        # Broden took only materials from OpenSurfaces: that is the default here too.
        super().__init__(options, ["material"] if categories is None else categories)

    @cached_property
    def _index(self) -> _Index:
        return self._build_index()

    def _build_index(self) -> _Index:
        root = self.options.root
        load_manifest("opensurfaces").check_layout(root)
        rows = _read_csv(root / "photos.csv", ("photo_id", "scene_category_name"))
        photo_ids: list[str] = []
        seen: set[str] = set()
        for lineno, row in enumerate(rows, 2):
            pid = (row["photo_id"] or "").strip()
            if not pid.isdigit() or pid in seen:
                raise SourceError(
                    f"{TITLE}: {root / 'photos.csv'}:{lineno}: bad or repeated photo_id {pid!r}"
                )
            seen.add(pid)
            photo_ids.append(pid)
        if not photo_ids:
            raise SourceError(f"{TITLE}: {root / 'photos.csv'} lists no photos")
        scenes = [normalize_scene(row["scene_category_name"] or "") for row in rows]
        materials = read_color_table(
            root / "label-substance-colors.csv", "substance_name", "red_color"
        )
        objects: dict[int, str] = {}
        if "object" in self.categories:
            objects = read_color_table(root / "label-name-colors.csv", "name_name", "green_color")
        return _Index(
            photo_ids, scenes, materials, objects, sorted({s for s in scenes if s is not None})
        )

    # -- adapter duties -------------------------------------------------------------------

    def check(self) -> None:
        _ = self._index  # building the index reads and checks the source

    def release_version(self) -> str | None:
        return "opensurfaces-release-0"

    def vocabulary(self) -> dict[str, dict[int, list[str]]]:
        idx = self._index
        vocab: dict[str, dict[int, list[str]]] = {}
        if "material" in self.categories:
            vocab["material"] = {v: split_names(n) for v, n in idx.materials.items()}
        if "object" in self.categories:
            vocab["object"] = {v: split_names(n) for v, n in idx.objects.items()}
        if "scene" in self.categories:
            vocab["scene"] = {i + 1: [s] for i, s in enumerate(idx.scene_names)}
        return vocab

    def __len__(self) -> int:
        return len(self._index.photo_ids)

    def source_id(self, index: int) -> str:
        return f"photos/{self._index.photo_ids[index]}.jpg"

    @cached_property
    def _scene_ids(self) -> dict[str, int]:
        return {s: i + 1 for i, s in enumerate(self._index.scene_names)}

    def load(self, index: int) -> SourceSample:
        idx = self._index
        pid = idx.photo_ids[index]
        root = self.options.root
        jpg = root / "photos" / f"{pid}.jpg"
        image = read_image(jpg)
        sample = SourceSample(source_id=f"photos/{pid}.jpg", image=image)
        channels = [
            (cat, ch, table, column)
            for cat, ch, table, column in (
                ("material", 0, idx.materials, "label-substance-colors.csv"),
                ("object", 1, idx.objects, "label-name-colors.csv"),
            )
            if cat in self.categories
        ]
        if channels:
            png = root / "photos-labels" / f"{pid}.png"
            labels = _fit_labels(read_png_rgb(png), image.shape[:2], png, jpg)
            for cat, ch, table, column in channels:
                plane = labels[..., ch]
                present = np.flatnonzero(np.bincount(plane.ravel(), minlength=256))
                unknown = [int(v) for v in present if v and v not in table]
                if unknown:
                    raise SampleError(
                        f"{png}: {'RG'[ch]} channel ({cat}) values {unknown[:5]} are not in "
                        f"{column}"
                    )
                sample.pixel[cat] = np.ascontiguousarray(plane)[None]
        scene = idx.scenes[index]
        if "scene" in self.categories and scene is not None:
            sample.image_labels["scene"] = [self._scene_ids[scene]]
        return sample


def _fit_labels(labels: np.ndarray, shape: tuple[int, ...], png: Path, jpg: Path) -> np.ndarray:
    """The label image at the photo's size: resampled by nearest neighbour when it has the
    photo's aspect ratio (the release renders it 1024 high), else :class:`SampleError`."""
    h, w = labels.shape[:2]
    H, W = shape[0], shape[1]
    if (h, w) == (H, W):
        return labels
    # The script renders width int(1024 · aspect): allow that truncation plus 1% slack.
    expected_w = h * W / H
    if abs(w - expected_w) > 1 + 0.01 * expected_w:
        raise SampleError(
            f"{png}: label image is {w}×{h} (W×H) but the photo {jpg.name} is {W}×{H}: "
            "their aspect ratios differ"
        )
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.intp), w - 1)
    return labels[rows[:, None], cols[None, :]]
