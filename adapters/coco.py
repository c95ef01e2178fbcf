"""COCO-format datasets: COCO instances, COCO-Stuff, LVIS, COCO panoptic, and your own.

One adapter reads any json in the COCO family; masks are decoded with pycocotools.
Written against these releases (checked on their real sample files, see the tests):

- COCO 2017 instances (``annotations_trainval2017.zip``: ``instances_{train,val}2017.json``;
  polygons, uncompressed RLE for ``iscrowd: 1``),
- COCO panoptic 2018 on the 2017 images (``panoptic_annotations_trainval2017.zip``:
  ``panoptic_{train,val}2017.json`` and the PNG folders inside its nested zips;
  segment id = R + 256·G + 256²·B, 0 = void), and the panopticapi converter's
  instances-format output (compressed RLE strings),
- COCO-Stuff 2017 (``stuff_annotations_trainval2017.zip``: ``stuff_{train,val}2017.json``;
  compressed RLE strings, categories 92..182 and 183 "other"),
- LVIS v0.5 and v1 (``lvis_v1_{train,val}.json``: polygons; categories carry ``synonyms``;
  images name their file only by ``coco_url``).

Expected tree (COCO 2017 unpacked in one folder; any other layout works, the config
names each path)::

    coco/
      train2017/000000000009.jpg ...            images (``images: coco/train2017``)
      val2017/000000000139.jpg ...
      annotations/
        instances_{train,val}2017.json          ``annotations:`` (instances)
        stuff_{train,val}2017.json              ``annotations:`` (COCO-Stuff)
        panoptic_{train,val}2017.json           ``annotations:`` (panoptic) ...
        panoptic_{train,val}2017/<id>.png       ... with ``panoptic:`` (unzip the
                                                nested panoptic_{split}2017.zip here)
      lvis_v1_{train,val}.json                  LVIS: ``images: coco`` (its file names are
                                                ``train2017/<id>.jpg`` from ``coco_url``)

Config keys (there is no ``root``)::

    - adapter: coco
      images: coco/val2017                     folder the json's file names are relative to
      annotations: coco/annotations/panoptic_val2017.json
      panoptic: coco/annotations/panoptic_val2017         (panoptic json only)
      category: object                         Broden category of the labels (default object)
      stuff_category: object                   category for ``isthing: 0`` classes (panoptic)
      supercategories: {}                      {COCO supercategory: Broden category}
      exclude_categories: []                   COCO category ids to leave out (COCO-Stuff: [183])
      include_crowd: true                      ``iscrowd: 1`` regions are pixels of their class

Category routing, first rule that applies: ``supercategories`` (by the COCO
``supercategory``), then ``stuff_category`` (categories with ``isthing: 0``; only
panoptic json says this, COCO-Stuff's stuff json holds nothing else, so give it
``category`` instead), then ``category``. A COCO category lives in one Broden category.

Labels: local id = COCO category id (non-contiguous is fine, ≤ 65535); names = the
category ``name`` without COCO's naming suffixes ``-merged``, ``-other``, ``-stuff``
("sky-other-merged" → "sky", "door-stuff" → "door"), then LVIS ``synonyms``, "_" read
as " ". The suffixed name is not kept as a synonym: under Broden's claiming rule an
unclaimed synonym would found a concept of its own, so stuff classes could not merge
with other sources' concepts of the same name ("sky" of ADE20K and of COCO-Stuff).

Overlaps: annotations (instances format) may overlap, of the same or of different
classes. Each Broden category gets a stack of layers filled greedily, annotations in
the order the json lists them: an annotation's mask goes into the first layer where
every pixel under it is 0 or already holds the same class, otherwise into a new layer.
Nothing is ever overwritten, so every class's pixels (any layer) are exactly the union
of its annotations' masks; same-class overlaps share a layer; layer 0 holds every
annotation that met no conflict. Panoptic segments never overlap: one layer. An image
with no annotation keeps a single all-zero layer (its colors still count).

Samples follow the json's ``images`` list; ``source_id`` is the image's path relative
to ``images`` (its ``file_name``). Images without annotations are kept. LVIS's
``neg_category_ids`` and ``not_exhaustive_category_ids`` are not used.

Errors. :class:`SourceError` (at :meth:`COCO.check`, before any work): a missing or
unparsable json, a json of the wrong shape, duplicate image or category ids,
annotations naming image ids the json does not list, a panoptic json without
``panoptic``. :class:`SampleError` (that image is skipped): an annotation whose
category id is not in ``categories``, a malformed segmentation, an RLE whose size
differs from the image or whose run lengths do not add up to it, a missing or corrupt
image or PNG, a panoptic PNG holding a segment id its ``segments_info`` lacks.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pydantic import AliasChoices, Field, field_validator, model_validator

from broden.adapters.base import Adapter, AdapterOptions, SourceSample
from broden.adapters.categories import Kind, category_sort_key
from broden.adapters.coco_geometry import (
    SegKind,
    check_runs,
    compact_segmentation,
    rle_string_counts,
)
from broden.adapters.decode import read_image, read_png_rgb, require_same_size
from broden.adapters.errors import SampleError, SourceError
from broden.adapters.files import file_bytes
from broden.adapters.layers import paint_layers

#: what a Broden category name may look like (it names the store's ``pixel/<category>``)
CATEGORY_NAME = r"^[A-Za-z0-9_-]+$"
_SUFFIXES = re.compile(r"(?:-merged)?(?:-other|-stuff)?(?:-merged)?$")
_COCO_URL = re.compile(r"^https?://[^/]+/(.+)$")
MAX_LABEL = 65535


class COCOOptions(AdapterOptions):
    """Config keys of a ``coco`` source (paths, and where its labels go)."""

    images: Path = Field(description="folder the json's image file names are relative to")
    annotations: Path = Field(description="the json: instances, COCO-Stuff, LVIS or panoptic")
    panoptic: Path | None = Field(
        None,
        validation_alias=AliasChoices("panoptic", "panoptic_masks"),
        description="folder of the panoptic PNGs (only for a panoptic json; the older "
        "spelling `panoptic_masks` is accepted)",
    )
    category: str = Field(
        "object", pattern=CATEGORY_NAME, description="Broden category of the labels"
    )
    stuff_category: str = Field(
        "object",
        pattern=CATEGORY_NAME,
        description="Broden category for classes with isthing == 0 (panoptic json)",
    )
    supercategories: dict[str, str] = Field(
        default_factory=dict,
        description="COCO supercategory -> Broden category (overrides the two above)",
    )
    exclude_categories: list[int] = Field(
        default_factory=list,
        description="COCO category ids whose annotations are left out (COCO-Stuff: [183])",
    )
    include_crowd: bool = Field(True, description="count iscrowd=1 regions as their class")

    @field_validator("supercategories")
    @classmethod
    def _category_names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [c for c in v.values() if not re.match(CATEGORY_NAME, c)]
        if bad:
            raise ValueError(f"invalid Broden category names {bad} (letters, digits, _ and -)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _no_root(cls, data: Any) -> Any:
        if isinstance(data, dict) and "root" in data:
            raise ValueError(
                "the coco adapter has no `root`: give `images` (image folder), `annotations` "
                "(the json) and, for a panoptic json, `panoptic` (the PNG folder)"
            )
        return data


# -- the index -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ann:
    """One instances-format annotation, its segmentation kept compact."""

    id: Any
    category: int
    kind: SegKind
    data: Any  # polygons: tuple of float64 arrays; rle: uint32 counts; string: bytes
    size: tuple[int, int] | None = None  # (h, w) of an RLE


@dataclass
class _Image:
    id: int
    file: str  # relative to `images`, posix
    height: int
    width: int
    anns: list[_Ann] = field(default_factory=list)
    png: str | None = None  # panoptic PNG file name, relative to `panoptic`
    segments: dict[int, int] = field(default_factory=dict)  # panoptic: segment id -> category
    error: str | None = None  # found while indexing; raised as SampleError by load()


@dataclass
class _Index:
    images: list[_Image]
    categories: dict[int, dict[str, Any]]
    panoptic: bool
    info: dict[str, Any]


def _image_of(image_id: Any, by_id: dict[int, _Image]) -> _Image | None:
    """The image an annotation's ``image_id`` names (None: not an id of `images`)."""
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        return None
    return by_id.get(image_id)


def _shown(value: Any) -> str:
    """A value from the json for a message: short, on one line."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 40 else text[:39] + "…"


def _fail_image(img: _Image, message: str) -> None:
    if img.error is None:  # the first problem is the one reported
        img.error = message


def clean_name(name: str) -> str:
    """A COCO class name read as words: "_" → " " and surrounding blanks removed."""
    return " ".join(name.replace("_", " ").split())


def category_names(cat: dict[str, Any]) -> list[str]:
    """Names of a COCO category, preferred first: the name without COCO's ``-merged``,
    ``-other``, ``-stuff`` suffixes (see the module docstring), then LVIS ``synonyms``."""
    raw = clean_name(str(cat["name"]))
    names = [_SUFFIXES.sub("", raw) or raw]
    names += [clean_name(str(s)) for s in cat.get("synonyms") or []]
    return list(dict.fromkeys(n for n in names if n))


# -- the adapter ---------------------------------------------------------------------------


class COCO(Adapter):
    """Any COCO-format json (instances, COCO-Stuff, LVIS, panoptic) with its images."""

    name = "coco"
    #: the default; the config's ``category``, ``stuff_category`` and ``supercategories``
    #: choose the categories an instance supplies (all per-pixel)
    kinds = {"object": "pixel"}
    Options = COCOOptions
    manifest_name = "coco"
    options: COCOOptions

    def __init__(self, options: AdapterOptions, categories: Sequence[str] | None = None):
        assert isinstance(options, COCOOptions)
        supplied = {options.category, *options.supercategories.values()}
        if options.stuff_category:
            supplied.add(options.stuff_category)
        self._kinds: dict[str, Kind] = {c: "pixel" for c in sorted(supplied, key=category_sort_key)}
        super().__init__(options, categories)
        self.categories  # noqa: B018 - check the request against the config now

    def supplied_kinds(self) -> dict[str, Kind]:
        return self._kinds

    def supplies_text(self) -> str:
        return "set `category`, `stuff_category` or `supercategories`; this config supplies"

    # -- index ----------------------------------------------------------------------------

    @cached_property
    def _index(self) -> _Index:
        return self._build_index()

    def _read_json(self) -> dict[str, Any]:
        path = self.options.annotations
        try:
            raw = file_bytes(path)
        except FileNotFoundError:
            raise SourceError(f"COCO: annotation file {path} does not exist") from None
        except IsADirectoryError:
            raise SourceError(f"COCO: {path} is a folder, expected the json file") from None
        except OSError as e:
            raise SourceError(f"COCO: cannot read {path} ({e.strerror})") from None
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SourceError(f"COCO: {path} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise SourceError(f"COCO: {path}: expected a json object, got {type(data).__name__}")
        for key in ("images", "categories"):
            if not isinstance(data.get(key), list):
                raise SourceError(f"COCO: {path}: no `{key}` list; is this a COCO-format json?")
        if not isinstance(data.get("annotations", []), list):
            raise SourceError(f"COCO: {path}: `annotations` is not a list")
        return data

    def _build_index(self) -> _Index:
        opts = self.options
        path = opts.annotations
        data = self._read_json()
        categories = self._read_categories(data["categories"])
        images = self._read_images(data["images"])
        by_id = {img.id: img for img in images}
        anns = data.get("annotations", [])
        panoptic = bool(anns) and isinstance(anns[0], dict) and "segments_info" in anns[0]
        if panoptic:
            self._index_panoptic(anns, by_id, categories)
        else:
            self._index_instances(anns, by_id, categories)
        if not images:
            raise SourceError(f"COCO: {path} lists no images")
        if panoptic and opts.panoptic is None:
            raise SourceError(
                f"COCO: {path} is a panoptic json (annotations with segments_info): set "
                "`panoptic` to the folder of its PNGs (e.g. annotations/panoptic_val2017)"
            )
        if not panoptic and opts.panoptic is not None:
            raise SourceError(
                f"COCO: `panoptic` is set but {path} is not a panoptic json (its "
                "annotations have no segments_info)"
            )
        for name, folder in (("images", opts.images), ("panoptic", opts.panoptic)):
            if folder is not None and not folder.is_dir():
                raise SourceError(f"COCO: `{name}` folder {folder} does not exist")
        info = data.get("info") if isinstance(data.get("info"), dict) else {}
        return _Index(images, categories, panoptic, info or {})

    def _read_categories(self, raw: list[Any]) -> dict[int, dict[str, Any]]:
        path = self.options.annotations
        categories: dict[int, dict[str, Any]] = {}
        for n, cat in enumerate(raw):
            if not (
                isinstance(cat, dict)
                and isinstance(cat.get("id"), int)
                and isinstance(cat.get("name"), str)
            ):
                raise SourceError(
                    f"COCO: {path}: categories[{n}] lacks an integer `id` or a `name`: {cat!r:.80}"
                )
            cid = cat["id"]
            if not 1 <= cid <= MAX_LABEL:
                raise SourceError(
                    f"COCO: {path}: category id {cid} ({cat['name']!r}) is outside 1..{MAX_LABEL}"
                )
            if cid in categories:
                raise SourceError(f"COCO: {path}: category id {cid} is listed twice")
            categories[cid] = cat
        missing = sorted(set(self.options.exclude_categories) - set(categories))
        if missing:
            raise SourceError(
                f"COCO: exclude_categories names ids {missing} that {path} does not define"
            )
        return categories

    def _read_images(self, raw: list[Any]) -> list[_Image]:
        path = self.options.annotations
        images: list[_Image] = []
        seen_ids: set[int] = set()
        seen_files: set[str] = set()
        for n, im in enumerate(raw):
            ok = (
                isinstance(im, dict)
                and isinstance(im.get("id"), int)
                and all(isinstance(im.get(k), int) and im[k] > 0 for k in ("height", "width"))
            )
            if not ok:
                raise SourceError(
                    f"COCO: {path}: images[{n}] lacks an integer `id`, `height` or `width`: "
                    f"{im!r:.100}"
                )
            file = self._image_file(im)
            if file is None:
                raise SourceError(
                    f"COCO: {path}: image {im['id']} has neither `file_name` nor `coco_url`"
                )
            if im["id"] in seen_ids:
                raise SourceError(f"COCO: {path}: image id {im['id']} is listed twice")
            if file in seen_files:
                raise SourceError(f"COCO: {path}: image file {file} is listed twice")
            seen_ids.add(im["id"])
            seen_files.add(file)
            images.append(_Image(im["id"], file, im["height"], im["width"]))
        return images

    @staticmethod
    def _image_file(im: dict[str, Any]) -> str | None:
        """The image's path relative to `images`: ``file_name``, or for LVIS (which has
        none) the last two parts of ``coco_url`` (``train2017/000000391895.jpg``)."""
        name = im.get("file_name")
        if isinstance(name, str) and name:
            rel = PurePosixPath(name.replace("\\", "/"))
        else:
            m = _COCO_URL.match(str(im.get("coco_url", "")))
            if not m:
                return None
            rel = PurePosixPath(*PurePosixPath(m.group(1)).parts[-2:])
        if rel.is_absolute() or ".." in rel.parts:
            return None
        return str(rel)

    def _index_instances(
        self, anns: list[Any], by_id: dict[int, _Image], categories: dict[int, dict[str, Any]]
    ) -> None:
        path = self.options.annotations
        excluded = set(self.options.exclude_categories)
        orphans: list[Any] = []
        for n, ann in enumerate(anns):
            if not isinstance(ann, dict) or "image_id" not in ann:
                raise SourceError(f"COCO: {path}: annotations[{n}] has no `image_id`")
            img = _image_of(ann["image_id"], by_id)
            if img is None:
                orphans.append(ann["image_id"])
                continue
            aid = _shown(ann.get("id", f"#{n}"))
            where = f"{path}: annotation {aid} of image {img.id} ({img.file})"
            cid = ann.get("category_id")
            if not isinstance(cid, int) or cid not in categories:
                _fail_image(img, f"{where}: category_id {_shown(cid)} is not in `categories`")
                continue
            if cid in excluded or (ann.get("iscrowd") and not self.options.include_crowd):
                continue
            try:
                seg = compact_segmentation(ann.get("segmentation"), img.height, img.width)
            except ValueError as e:
                _fail_image(img, f"{where}: {e}")
                continue
            if seg is not None:
                img.anns.append(_Ann(aid, cid, *seg))
        self._raise_orphans(orphans)

    def _index_panoptic(
        self, anns: list[Any], by_id: dict[int, _Image], categories: dict[int, dict[str, Any]]
    ) -> None:
        path = self.options.annotations
        excluded = set(self.options.exclude_categories)
        orphans: list[Any] = []
        for n, ann in enumerate(anns):
            ok = (
                isinstance(ann, dict)
                and "image_id" in ann
                and isinstance(ann.get("file_name"), str)
                and isinstance(ann.get("segments_info"), list)
            )
            if not ok:
                raise SourceError(
                    f"COCO: {path}: panoptic annotations[{n}] lacks `image_id`, `file_name` "
                    "or `segments_info`"
                )
            img = _image_of(ann["image_id"], by_id)
            if img is None:
                orphans.append(ann["image_id"])
                continue
            if img.png is not None:
                raise SourceError(f"COCO: {path}: image {img.id} has two panoptic annotations")
            img.png = ann["file_name"]
            where = f"{path}: panoptic annotation of image {img.id} ({ann['file_name']})"
            for seg in ann["segments_info"]:
                if not isinstance(seg, dict):
                    _fail_image(img, f"{where}: a segments_info entry is not an object")
                    continue
                sid, cid = seg.get("id"), seg.get("category_id")
                if not isinstance(sid, int) or sid <= 0:
                    _fail_image(img, f"{where}: segment id {_shown(sid)} is not a positive integer")
                elif not isinstance(cid, int) or cid not in categories:
                    bad = _shown(cid)
                    _fail_image(
                        img, f"{where}: segment {sid}: category_id {bad} is not in `categories`"
                    )
                elif sid in img.segments:
                    _fail_image(img, f"{where}: segment id {sid} is listed twice")
                elif cid in excluded or (seg.get("iscrowd") and not self.options.include_crowd):
                    img.segments[sid] = 0  # known segment, no label
                else:
                    img.segments[sid] = cid
        self._raise_orphans(orphans)

    def _raise_orphans(self, orphans: list[Any]) -> None:
        if orphans:
            shown = ", ".join(list(dict.fromkeys(_shown(i) for i in orphans))[:5])
            raise SourceError(
                f"COCO: {self.options.annotations}: {len(orphans)} annotations refer to image ids "
                f"not in `images` (e.g. {shown})"
            )

    # -- categories -------------------------------------------------------------------------

    def _target(self, cat: dict[str, Any]) -> str:
        """The Broden category a COCO category's labels go to."""
        opts = self.options
        sc = cat.get("supercategory")
        if isinstance(sc, str) and sc in opts.supercategories:
            return opts.supercategories[sc]
        if opts.stuff_category and cat.get("isthing") == 0:
            return opts.stuff_category
        return opts.category

    @cached_property
    def _targets(self) -> dict[int, str]:
        """COCO category id -> Broden category, for the ids this source delivers."""
        excluded = set(self.options.exclude_categories)
        targets = {}
        for cid, cat in self._index.categories.items():
            target = self._target(cat)
            if cid not in excluded and target in self.categories:
                targets[cid] = target
        return targets

    # -- adapter duties -----------------------------------------------------------------------

    def check(self) -> None:
        _ = self._index  # building the index reads and checks the source

    def vocabulary(self) -> dict[str, dict[int, list[str]]]:
        cats = self._index.categories
        vocab: dict[str, dict[int, list[str]]] = {c: {} for c in self.categories}
        for cid, target in self._targets.items():
            vocab[target][cid] = category_names(cats[cid])
        return vocab

    def __len__(self) -> int:
        return len(self._index.images)

    def source_id(self, index: int) -> str:
        return self._index.images[index].file

    def load(self, index: int) -> SourceSample:
        idx = self._index
        img = idx.images[index]
        if img.error:
            raise SampleError(img.error)
        path = self.options.images / img.file
        image = read_image(path)
        h, w = image.shape[:2]
        if (h, w) != (img.height, img.width):
            raise SampleError(
                f"{path}: the image is {w}×{h} but {self.options.annotations} says "
                f"{img.width}×{img.height} (W×H)"
            )
        if idx.panoptic:
            pixel = self._panoptic_maps(img, (h, w))
        else:
            pixel = self._instance_maps(img, (h, w))
        return SourceSample(source_id=img.file, image=image, pixel=pixel)

    # -- decoding -------------------------------------------------------------------------

    def _rle(self, ann: _Ann, img: _Image, shape: tuple[int, int]) -> dict[str, Any]:
        """The annotation as one pycocotools RLE of the image's size."""
        h, w = shape
        where = f"{self.options.annotations}: annotation {ann.id} of image {img.id} ({img.file})"
        if ann.kind == "polygons":
            return mask_utils.merge(mask_utils.frPyObjects(list(ann.data), h, w))
        if ann.size != (h, w):
            assert ann.size is not None
            raise SampleError(
                f"{where}: RLE size {ann.size[1]}×{ann.size[0]} differs from the image's "
                f"{w}×{h} (W×H)"
            )
        if ann.kind == "rle":
            wrong = check_runs(ann.data.astype(np.int64), h, w)
            if wrong:
                raise SampleError(f"{where}: {wrong}")
            return mask_utils.frPyObjects({"counts": ann.data.tolist(), "size": [h, w]}, h, w)
        try:
            runs = rle_string_counts(ann.data)
        except ValueError as e:
            raise SampleError(f"{where}: corrupt RLE string ({e})") from None
        wrong = check_runs(runs, h, w)
        if wrong:
            raise SampleError(f"{where}: {wrong}")
        return {"counts": ann.data, "size": [h, w]}

    def _instance_maps(self, img: _Image, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        targets = self._targets
        stacks: dict[str, list[np.ndarray]] = {c: [] for c in self.categories}
        for ann in img.anns:
            target = targets.get(ann.category)
            if target is None:
                continue
            rle = self._rle(ann, img, shape)
            if int(mask_utils.area(rle)) == 0:
                continue
            x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
            box = (
                slice(int(y), min(shape[0], math.ceil(y + bh))),
                slice(int(x), min(shape[1], math.ceil(x + bw))),
            )
            mask = mask_utils.decode(rle)[box].astype(bool)
            paint_layers(stacks[target], ann.category, mask, box, shape)
        return {
            c: np.stack(layers) if layers else np.zeros((1, *shape), np.uint16)
            for c, layers in stacks.items()
        }

    def _panoptic_maps(self, img: _Image, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        if img.png is None:  # listed in `images` without a panoptic annotation: unlabeled
            return {c: np.zeros((1, *shape), np.uint16) for c in self.categories}
        assert self.options.panoptic is not None
        path = self.options.panoptic / img.png
        rgb = read_png_rgb(path)
        require_same_size(path, "the mask", rgb.shape, img.file, shape)
        ids = panoptic_ids(rgb)
        present, inverse = np.unique(ids, return_inverse=True)
        unknown = [int(s) for s in present if s and s not in img.segments]
        if unknown:
            raise SampleError(
                f"{path}: segment ids {unknown[:5]} are not in the segments_info of image {img.id}"
            )
        targets = self._targets
        out = {}
        for c in self.categories:
            lut = np.array(
                [
                    img.segments[int(s)] if s and targets.get(img.segments[int(s)]) == c else 0
                    for s in present
                ],
                np.uint16,
            )
            out[c] = lut[inverse.reshape(shape)][None]
        return out

    # -- description ----------------------------------------------------------------------

    def _is_coco_release(self) -> bool:
        """Whether the json is one of the public COCO-family releases (else a user's own)."""
        idx = self._index
        desc = str(idx.info.get("description", ""))
        lvis = any("synset" in c for c in idx.categories.values())
        return desc.startswith("COCO") or lvis

    def release_version(self) -> str | None:
        idx = self._index
        words = [str(idx.info[k]) for k in ("description", "version") if idx.info.get(k)]
        if not words and any("synset" in c for c in idx.categories.values()):
            words = ["LVIS"]
        return " ".join(words) or None

    def describe(self) -> dict[str, Any]:
        if self._is_coco_release():
            return super().describe()
        # a user's own COCO-format dataset: COCO's license and citation do not apply
        return {
            "adapter": self.name,
            "categories": list(self.categories),
            "title": self._index.info.get("description") or self.options.annotations.name,
            "version": self.release_version(),
        }


def panoptic_ids(rgb: np.ndarray) -> np.ndarray:
    """Segment ids of a panoptic PNG: R + 256·G + 256²·B (panopticapi's ``rgb2id``)."""
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
