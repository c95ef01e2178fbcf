"""ADE20K full dataset: objects, parts (one layer per part level) and scenes.

Written against the two public releases. ``root`` is the release folder.

ADE20K_2021_17_01 (index optional)::

    ADE20K_2021_17_01/
      index_ade20k.pkl                       (optional; see below)
      images/ADE/{training,validation}/<scene group>/<scene>/
        ADE_train_00016869.jpg               photo
        ADE_train_00016869.json              annotation: objects with name, name_ndx, parts
        ADE_train_00016869_seg.png           objects: class = (R // 10) * 256 + G, 0 = none
        ADE_train_00016869_parts_1.png       parts of objects (same encoding)
        ADE_train_00016869_parts_2.png       parts of parts, ... while such files exist
        ADE_train_00016869/instance_NNN_*.png  (amodal instance masks, not read)

ADE20K_2016_07_26 (the release Broden used)::

    ADE20K_2016_07_26/
      index_ade20k.mat                       struct `index`: filename, folder, scene, objectnames
      images/{training,validation}/<letter>/<scene>/ADE_train_%08d{.jpg,_seg.png,_parts_N.png}

Class values are 1-based indices into the release's ``objectnames`` (= a json
object's ``name_ndx``); objects and parts share that namespace, so the local id of
a label is its class value in both categories. Names are the WordNet-style
``objectnames`` entry split on ", " (synonyms, preferred first).

The 2021 index is a 780 MB pickle. Unpickling runs code, so it is read only when
its sha256 matches the config's ``index_sha256`` (a checksum you trust); otherwise
the image list, the names and the scenes are read from the per-image ``.json``
files (no index needed).

Scenes: the 2016 index's scene string, or the 2021 json's scene list (entries after
the indoor/outdoor flag and the scene group, joined by "-"), normalised as Broden did
(" - " and "/" become "-"; a name starting with "~" is unlabeled).

Part hierarchy (``part_of``): a level-N part belongs to the level-(N-1) label under
it (level 0 = the objects). 2021: the pairs the json declares (``parts.ispartof``),
with the pixels of the part that lie on its parent's class. 2016: each part
instance (the B channel of ``_parts_N.png``) belongs to the class it overlaps most
in the level below.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from pydantic import Field
from tqdm import tqdm

from broden.adapters.base import (
    Adapter,
    PartOf,
    RootOptions,
    SampleError,
    SourceError,
    SourceSample,
)
from broden.adapters.decode import load_mat, read_image, read_png_rgb, require_same_size
from broden.adapters.files import file_text
from broden.adapters.manifest import file_sha256, load_manifest


class ADE20KOptions(RootOptions):
    index_sha256: str | None = Field(
        None,
        description="sha256 of index_ade20k.pkl that you trust; without it the pickle is "
        "never loaded and the per-image .json files are read instead",
    )


@dataclass
class _Entry:
    rel: str  # the .jpg, relative to root, posix
    scene: str | None
    error: str | None = None  # a problem found while indexing (e.g. a json that does not parse)


@dataclass
class _Index:
    version: str
    entries: list[_Entry]
    names: dict[int, list[str]]  # class value (name_ndx) -> names
    scenes: list[str] = field(default_factory=list)  # sorted; local id = position + 1


_DIV10 = (np.arange(256) // 10).astype(np.uint8)


def decode_class_mask(rgb: np.ndarray) -> np.ndarray:
    """ADE20K class map of an RGB-encoded mask: (R // 10) * 256 + G, as uint16.

    (R // 10 through a lookup table: twice as fast as numpy's integer division.)"""
    r, g, _ = cv2.split(np.ascontiguousarray(rgb))
    cls = np.asarray(cv2.LUT(r, _DIV10)).astype(np.uint16)
    cls <<= 8
    cls |= np.asarray(g, np.uint8)
    return cls


def normalize_scene(raw: Any) -> str | None:
    """Broden's scene name of an index or json scene entry; None for unlabeled."""
    if isinstance(raw, list | tuple | np.ndarray):
        parts = [str(p).strip() for p in raw if str(p).strip()]
        raw = "-".join(parts[2:]) if len(parts) >= 3 else (parts[-1] if parts else "")
    name = str(raw).strip().replace(" - ", "-").replace("/", "-")
    if not name or name == "-" or name.startswith("~"):
        return None
    return name


def split_names(name: str) -> list[str]:
    """``"car, auto, automobile"`` → ``["car", "auto", "automobile"]``."""
    return [n.strip() for n in str(name).split(", ") if n.strip()]


def _rel_from_folder(folder: str, filename: str) -> str:
    """Path of an index entry relative to the release root: from the ``images`` component on."""
    parts = PurePosixPath(str(folder).replace("\\", "/")).parts
    if "images" in parts:
        parts = parts[parts.index("images") :]
    return str(PurePosixPath(*parts, str(filename)))


class ADE20K(Adapter):
    """ADE20K full dataset (2016 or 2021 layout): objects, parts and scenes."""

    name = "ade20k"
    kinds = {"object": "pixel", "part": "pixel", "scene": "image"}
    Options = ADE20KOptions
    manifest_name = "ade20k"
    options: ADE20KOptions

    # -- index ----------------------------------------------------------------------------

    @cached_property
    def _index(self) -> _Index:
        return self._build_index()

    def _build_index(self) -> _Index:
        root = self.options.root
        release = load_manifest("ade20k").check_layout(root)
        if release.version.startswith("ADE20K_2016"):
            index = self._index_from_mat(root / "index_ade20k.mat")
        else:
            pkl = root / "index_ade20k.pkl"
            if pkl.exists() and self.options.index_sha256:
                index = self._index_from_pkl(pkl, self.options.index_sha256)
            else:
                if pkl.exists():
                    warnings.warn(
                        f"{pkl} is not loaded: a pickle runs code when read, and no checksum "
                        "you trust was given (config key index_sha256). Reading names from the "
                        "per-image .json files instead.",
                        stacklevel=2,
                    )
                index = self._index_from_json(root)
        index.version = release.version
        if not index.entries:
            raise SourceError(f"ADE20K: no images found under {root / 'images'}")
        return index

    def _index_from_json(self, root: Path) -> _Index:
        jpgs: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root / "images"):
            dirnames.sort()
            for f in filenames:
                if f.endswith(".jpg"):
                    jpgs.append(str(PurePosixPath(Path(dirpath).relative_to(root).as_posix(), f)))
        jpgs.sort()
        names: dict[int, list[str]] = {}
        entries: list[_Entry] = []
        for rel in tqdm(jpgs, desc="ade20k: reading .json names", unit="img", disable=None):
            ann, error = self._read_json(root / rel)
            if ann is None:
                entries.append(_Entry(rel, None, error))
                continue
            for obj in ann["object"]:
                names.setdefault(int(obj["name_ndx"]), split_names(obj["name"]))
            entries.append(_Entry(rel, normalize_scene(ann.get("scene", []))))
        return _Index("", entries, names, sorted({e.scene for e in entries if e.scene}))

    @staticmethod
    def _read_json(jpg: Path) -> tuple[dict[str, Any] | None, str | None]:
        path = jpg.with_suffix(".json")
        try:
            ann = json.loads(file_text(path))["annotation"]
            for obj in ann["object"]:
                int(obj["name_ndx"]), str(obj["name"])
                obj["parts"]["part_level"]
        except FileNotFoundError:
            return None, f"{path}: annotation file is missing"
        except OSError as e:
            return None, f"{path}: cannot read ({e.strerror})"
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return None, f"{path}: not valid JSON ({e})"
        except (KeyError, TypeError, ValueError) as e:
            return None, f"{path}: unexpected annotation structure (missing or bad {e})"
        return ann, None

    def _index_from_pkl(self, pkl: Path, trusted: str) -> _Index:
        actual = file_sha256(pkl)
        if actual.lower() != trusted.lower():
            raise SourceError(
                f"ADE20K: {pkl} has sha256 {actual}, not the index_sha256 {trusted} given in "
                "the config; refusing to unpickle it"
            )
        with open(pkl, "rb") as f:
            data = pickle.load(f)  # noqa: S301 - verified against a trusted checksum above
        return self._index_from_fields(
            data["filename"], data["folder"], data["scene"], data["objectnames"]
        )

    def _index_from_mat(self, path: Path) -> _Index:
        try:
            mat = load_mat(path, squeeze_me=True)
        except SampleError as e:
            raise SourceError(f"ADE20K: {e}") from None
        if "index" not in mat:
            raise SourceError(f"ADE20K: {path} has no variable 'index'")
        index = mat["index"]
        need = ("filename", "folder", "scene", "objectnames")
        missing = [n for n in need if n not in (index.dtype.names or ())]
        if missing:
            raise SourceError(f"ADE20K: {path}: the index struct lacks fields {missing}")

        def field_list(name: str) -> list[Any]:
            return list(np.atleast_1d(index[name][()]))

        return self._index_from_fields(
            field_list("filename"),
            field_list("folder"),
            field_list("scene"),
            field_list("objectnames"),
        )

    @staticmethod
    def _index_from_fields(
        filenames: list[Any], folders: list[Any], scenes: list[Any], objectnames: list[Any]
    ) -> _Index:
        if not (len(filenames) == len(folders) == len(scenes)):
            raise SourceError(
                f"ADE20K index: filename, folder and scene have different lengths "
                f"({len(filenames)}, {len(folders)}, {len(scenes)})"
            )
        entries = [
            _Entry(_rel_from_folder(str(fo), str(fn)), normalize_scene(sc))
            for fn, fo, sc in zip(filenames, folders, scenes, strict=True)
        ]
        names = {i + 1: split_names(str(n)) for i, n in enumerate(objectnames)}
        return _Index("", entries, names, sorted({e.scene for e in entries if e.scene}))

    # -- adapter duties -------------------------------------------------------------------

    def check(self) -> None:
        _ = self._index  # building the index reads and checks the source

    def release_version(self) -> str | None:
        return self._index.version

    def vocabulary(self) -> dict[str, dict[int, list[str]]]:
        index = self._index
        vocab: dict[str, dict[int, list[str]]] = {}
        for cat in ("object", "part"):
            if cat in self.categories:
                vocab[cat] = dict(index.names)
        if "scene" in self.categories:
            vocab["scene"] = {i + 1: [s] for i, s in enumerate(index.scenes)}
        return vocab

    def __len__(self) -> int:
        return len(self._index.entries)

    def source_id(self, index: int) -> str:
        return self._index.entries[index].rel

    @cached_property
    def _known_classes(self) -> np.ndarray:
        """Boolean lookup over every possible class value (0 = unlabeled is known)."""
        known = np.zeros(26 * 256, bool)  # (255 // 10) * 256 + 255 is the largest value
        known[0] = True
        known[[c for c in self._index.names if c < len(known)]] = True
        return known

    @cached_property
    def _scene_ids(self) -> dict[str, int]:
        return {s: i + 1 for i, s in enumerate(self._index.scenes)}

    def load(self, index: int) -> SourceSample:
        idx = self._index
        entry = idx.entries[index]
        if entry.error:
            raise SampleError(entry.error)
        jpg = self.options.root / entry.rel
        stem = str(jpg)[: -len(".jpg")]
        image = read_image(jpg)
        shape = image.shape[:2]

        def class_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
            rgb = read_png_rgb(path)
            require_same_size(path, "mask", rgb.shape, jpg.name, shape)
            cls = decode_class_mask(rgb)
            if not self._known_classes[cls].all():
                unknown = [int(c) for c in np.unique(cls[~self._known_classes[cls]])]
                raise SampleError(
                    f"{path}: class values {unknown[:5]} are not in the ADE20K object names"
                )
            return cls, rgb[..., 2]

        seg, seg_inst = class_map(Path(stem + "_seg.png"))
        levels: list[tuple[np.ndarray, np.ndarray]] = []
        while (p := Path(f"{stem}_parts_{len(levels) + 1}.png")).exists():
            levels.append(class_map(p))

        sample = SourceSample(source_id=entry.rel, image=image)
        if "object" in self.categories:
            sample.pixel["object"] = seg[None]
        if "part" in self.categories and levels:
            sample.pixel["part"] = np.stack([cls for cls, _ in levels])
            maps = [seg] + [cls for cls, _ in levels]
            if idx.version.startswith("ADE20K_2016"):
                sample.part_of = _part_of_by_overlap(maps, [inst for _, inst in levels])
            else:
                ann, error = self._read_json(jpg)
                if ann is None:
                    raise SampleError(str(error))
                sample.part_of = _part_of_from_json(maps, ann)
            # edges to objects only when objects are taken (as pixel maps are)
            sample.part_of = [e for e in sample.part_of if e.parent_category in self.categories]
        if "scene" in self.categories and entry.scene:
            sample.image_labels["scene"] = [self._scene_ids[entry.scene]]
        return sample


def _parent_category(level: int) -> str:
    return "object" if level == 1 else "part"


def _joint_counts(part_map: np.ndarray, parent_map: np.ndarray) -> dict[tuple[int, int], int]:
    """Pixel counts of (part class, class under it) over the part's pixels."""
    on = part_map > 0
    key = part_map[on].astype(np.int64) << 16 | parent_map[on].astype(np.int64)
    keys, counts = np.unique(key, return_counts=True)
    return {(int(k >> 16), int(k & 0xFFFF)): int(c) for k, c in zip(keys, counts, strict=True)}


def _part_of_from_json(maps: list[np.ndarray], ann: dict[str, Any]) -> list[PartOf]:
    """Edges declared by the json (``parts.ispartof``), weighted by overlapping pixels."""
    by_id = {int(o["id"]): o for o in ann["object"]}
    declared: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for o in ann["object"]:
        parent_id = o["parts"].get("ispartof")
        level = int(o["parts"]["part_level"])
        if level >= 1 and isinstance(parent_id, int) and parent_id in by_id:
            declared[level].add((int(o["name_ndx"]), int(by_id[parent_id]["name_ndx"])))
    edges = []
    for level in range(1, len(maps)):
        counts = _joint_counts(maps[level], maps[level - 1])
        for part, parent in sorted(declared.get(level, ())):
            pixels = counts.get((part, parent), 0)
            if pixels:
                edges.append(PartOf("part", part, _parent_category(level), parent, pixels))
    return edges


def _part_of_by_overlap(maps: list[np.ndarray], instances: list[np.ndarray]) -> list[PartOf]:
    """Each part instance belongs to the class it overlaps most in the level below."""
    totals: dict[tuple[int, int, int], int] = defaultdict(int)
    for level in range(1, len(maps)):
        part, inst, below = maps[level], instances[level - 1], maps[level - 1]
        on = (part > 0) & (below > 0)
        key = (
            part[on].astype(np.int64) << 24
            | inst[on].astype(np.int64) << 16
            | below[on].astype(np.int64)
        )
        keys, counts = np.unique(key, return_counts=True)
        best: dict[tuple[int, int], tuple[int, int]] = {}
        for k, c in zip(keys.tolist(), counts.tolist(), strict=True):
            p, i, b = k >> 24, (k >> 16) & 0xFF, k & 0xFFFF
            if c > best.get((p, i), (0, 0))[0]:
                best[(p, i)] = (c, b)
        for (p, _), (c, b) in best.items():
            totals[(level, p, b)] += c
    return [
        PartOf("part", p, _parent_category(level), b, c)
        for (level, p, b), c in sorted(totals.items())
    ]
