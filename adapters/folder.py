"""Your own concept set from a plain folder: images, label PNGs or masks, a labels CSV.

Layout (``root`` is the folder; image subfolders are allowed and mirrored under
``labels/`` and ``masks/``)::

    my_concepts/
      labels.csv                          id,name,category[,synonyms]
      image_labels.csv                    optional: image,category,ids (whole-image labels)
      images/
        street_01.jpg                     .jpg, .jpeg or .png
        shop/window_07.png
      labels/
        street_01_object.png              one layer of category `object` for street_01
        street_01_material_1.png          layers 1, 2, ... of category `material` where
        street_01_material_2.png          its labels overlap
        shop/window_07_object.png
      masks/                              optional: per-concept binary masks
        street_01/object/1.png            one mask of `object` id 1 (car) on street_01
        street_01/object/1_b.png          another mask of id 1 (a second car), any tag
        street_01/material/300_a.png      masks may overlap, of one id or of several
        shop/window_07/object/2.png

``labels.csv`` (header required; UTF-8)::

    id,name,category,synonyms
    1,car,object,auto;automobile
    2,road,object,
    1,glass,material,
    1,shop,scene,store

- ``id``: the local label id (1..65535; 0 is "unlabeled"), unique within its category.
- ``name``: the preferred name; ``synonyms``: optional, ``;``-joined, after it.
- ``category``: a Broden category (``object``, ``part``, ``material``, ``texture``,
  ``scene``, ...) or one of your own (letters, digits, ``_``, ``-``).

``image_labels.csv`` (optional; header required)::

    image,category,ids
    shop/window_07.png,scene,1
    street_01,texture,3;1

- ``image``: the image's path under ``images/``, with or without its extension.
- ``ids``: ``;``-joined ids of that category, dominant first.

A category named in ``image_labels.csv`` is a whole-image category (kind ``image``);
every other category of ``labels.csv`` is per-pixel (kind ``pixel``) and has its maps
in ``labels/``, its masks in ``masks/``, or both (either folder may be absent, not
both). A label map is ``labels/<image path without extension>_<category>.png``
(one layer), or ``..._<category>_<k>.png`` for k = 1, 2, ... consecutive (several layers,
first = dominant; do not mix the two forms). Its pixel values are the label ids:

- a grey PNG (8- or 16-bit) or a palette PNG (the palette indices): the value is the id;
- an 8-bit RGB(A) PNG: id = R + 256·G, Broden's encoding (B and alpha are ignored).

Per-concept masks (``masks/``) are a second way to give per-pixel labels, e.g. one
PNG per object instance exported from an annotation tool:
``masks/<image path without extension>/<category>/<id>.png``, or ``.../<id>_<tag>.png``
(any tag) for several masks of one id. ``<category>`` is a per-pixel category of
``labels.csv`` and ``<id>`` one of its ids. A mask is binary, pixel ≠ 0 is the label:

- a grey PNG (8- or 16-bit, 1-bit too) or a palette PNG: value (palette index) ≠ 0;
- an RGB(A) PNG: any of R, G, B ≠ 0 (alpha is ignored: draw the shape, not just its
  transparency). An all-zero mask is allowed and adds nothing.

Masks may overlap, of the same id or of different ids; they are layered without ever
overwriting (:func:`broden.adapters.layers.paint_layers`, as in the ``coco`` adapter): each
mask, in file-name order (sorted as strings: ``10.png`` before ``2.png``), goes into
the first layer where every pixel under it is 0 or already its id, else into a new
layer. An image may have both label maps and masks of one category: the label maps'
layers come first, and the masks are painted onto them the same way (into free
pixels, never overwriting). So an id's pixels (any layer) are exactly its label-map
pixels plus the union of its masks. An image whose masks of a category are all empty
gets one all-zero layer of it.

Label maps and masks must have the image's size. An image without label files or
masks and without image labels is kept (its colors still count).

Checks. :meth:`Folder.check` (before any work; :class:`SourceError`): the folders and
CSVs exist and parse, ids are in range and unique, every label file names an image and
a per-pixel category, layer numbers are consecutive, every ``image_labels.csv`` row
names an image and known ids, every mask file is a ``.png`` named ``<id>.png`` or
``<id>_<tag>.png`` under ``masks/<image>/<category>/`` with a known image, a per-pixel
category and an id of that category. At :meth:`Folder.load` (:class:`SampleError`, the
image is skipped): an unreadable image or PNG, a label map or mask of another size than
its image, a label-map pixel value that is not an id of ``labels.csv``.

Optional config keys ``title``, ``license`` and ``citation`` are recorded in the store's
provenance.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from broden.adapters.base import (
    Adapter,
    RootOptions,
    SampleError,
    SourceError,
    SourceSample,
)
from broden.adapters.categories import Kind, category_sort_key
from broden.adapters.decode import read_image, read_png, require_same_size
from broden.adapters.files import open_text
from broden.adapters.layers import paint_layers

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CATEGORY_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_LABEL = 65535
LABELS_CSV = "labels.csv"
IMAGE_LABELS_CSV = "image_labels.csv"
MASK_NAME = re.compile(r"^(\d+)(?:_(.+))?\.png$", re.IGNORECASE)


class FolderOptions(RootOptions):
    """Config keys of a ``folder`` source."""

    title: str | None = Field(None, description="the dataset's title, for the provenance")
    license: str | None = Field(None, description="its license, for the provenance")
    citation: str | None = Field(None, description="how to cite it, for the provenance")


@dataclass
class _Entry:
    rel: str  # image path relative to images/, posix
    layers: dict[str, list[str]] = field(default_factory=dict)  # category -> files in labels/
    image_labels: dict[str, list[int]] = field(default_factory=dict)
    #: category -> (id, file in masks/), in file-name order
    masks: dict[str, list[tuple[int, str]]] = field(default_factory=dict)


@dataclass
class _ImageRow:
    line: int
    image: str
    category: str
    ids: list[int]


def _read_csv(path: Path, required: tuple[str, ...], allowed: tuple[str, ...]) -> list[dict]:
    """Rows of a CSV with a header (dicts), after checking the header's columns."""
    try:
        with open_text(path, "utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    except FileNotFoundError:
        raise SourceError(
            f"folder: {path} is missing (its header: {','.join(allowed)}; see the folder "
            "adapter's documentation for the layout)"
        ) from None
    except UnicodeDecodeError as e:
        raise SourceError(f"folder: {path} is not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise SourceError(f"folder: {path} is not a readable CSV ({e})") from None
    missing = [c for c in required if c not in header]
    extra = [c for c in header if c not in allowed]
    if missing or extra:
        raise SourceError(
            f"folder: {path}: the header must be {','.join(allowed)} (the last optional where "
            f"marked in the docs), got {','.join(header) or 'nothing'}"
        )
    for n, row in enumerate(rows, 2):
        if None in row or any(v is None for v in row.values()):
            raise SourceError(f"folder: {path}:{n}: wrong number of fields")
    return rows


def _parse_id(text: str, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise SourceError(f"{where}: id {text!r} is not an integer") from None
    if not 1 <= value <= MAX_LABEL:
        raise SourceError(f"{where}: id {value} is outside 1..{MAX_LABEL} (0 means unlabeled)")
    return value


def read_labels_csv(path: Path) -> dict[str, dict[int, list[str]]]:
    """``labels.csv`` as category → id → names (preferred first)."""
    rows = _read_csv(path, ("id", "name", "category"), ("id", "name", "category", "synonyms"))
    vocab: dict[str, dict[int, list[str]]] = {}
    for n, row in enumerate(rows, 2):
        where = f"folder: {path}:{n}"
        category = row["category"].strip()
        if not CATEGORY_NAME.match(category):
            raise SourceError(f"{where}: category {category!r} must be letters, digits, '_' or '-'")
        label = _parse_id(row["id"], where)
        name = row["name"].strip()
        if not name:
            raise SourceError(f"{where}: empty name")
        synonyms = [s.strip() for s in (row.get("synonyms") or "").split(";") if s.strip()]
        ids = vocab.setdefault(category, {})
        if label in ids:
            raise SourceError(f"{where}: {category} id {label} is listed twice")
        ids[label] = list(dict.fromkeys([name, *synonyms]))
    if not vocab:
        raise SourceError(f"folder: {path} lists no labels")
    return vocab


def read_image_labels_csv(path: Path, vocab: dict[str, dict[int, list[str]]]) -> list[_ImageRow]:
    """``image_labels.csv`` rows, ids checked against ``labels.csv``."""
    rows = _read_csv(path, ("image", "category", "ids"), ("image", "category", "ids"))
    out: list[_ImageRow] = []
    seen: set[tuple[str, str]] = set()
    for n, row in enumerate(rows, 2):
        where = f"folder: {path}:{n}"
        image, category = row["image"].strip().replace("\\", "/"), row["category"].strip()
        if not image:
            raise SourceError(f"{where}: empty image name")
        if category not in vocab:
            raise SourceError(f"{where}: category {category!r} is not in {LABELS_CSV}")
        ids = [_parse_id(t, where) for t in row["ids"].split(";") if t.strip()]
        if not ids:
            raise SourceError(f"{where}: no ids")
        unknown = [i for i in ids if i not in vocab[category]]
        if unknown:
            raise SourceError(f"{where}: {category} ids {unknown} are not in {LABELS_CSV}")
        if (image, category) in seen:
            raise SourceError(f"{where}: image {image} has a second {category} row")
        seen.add((image, category))
        out.append(_ImageRow(n, image, category, list(dict.fromkeys(ids))))
    return out


def decode_label_png(arr: np.ndarray, path: Path) -> np.ndarray:
    """Label ids of a decoded PNG: grey/palette values, or R + 256·G of an 8-bit RGB."""
    if arr.ndim == 2:
        return arr.astype(np.uint16)
    if arr.ndim == 3 and arr.dtype == np.uint8:
        return arr[..., 0].astype(np.uint16) + (arr[..., 1].astype(np.uint16) << 8)
    raise SampleError(
        f"{path}: a label map must be a grey, palette or 8-bit RGB PNG, got shape {arr.shape} "
        f"dtype {arr.dtype}"
    )


def decode_mask_png(arr: np.ndarray, path: Path) -> np.ndarray:
    """A decoded mask PNG as bool H×W: grey/palette value ≠ 0, or any of R, G, B ≠ 0."""
    if arr.ndim == 2:
        return arr != 0
    if arr.ndim == 3:
        return np.any(arr[..., :3] != 0, axis=2)
    raise SampleError(
        f"{path}: a mask must be a grey, palette or RGB(A) PNG, got shape {arr.shape}"
    )


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The smallest (rows, cols) crop holding every True pixel of ``mask``; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not rows.size:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _walk(folder: Path) -> list[str]:
    """Posix paths of the non-hidden files under ``folder``, relative to it, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder).as_posix()
        out += [str(PurePosixPath(rel, f)) for f in filenames if not f.startswith(".")]
    return sorted(out)


class Folder(Adapter):
    """A user's concept set: ``images/``, ``labels/*.png``, ``masks/``, ``labels.csv``."""

    name = "folder"
    #: declared by the folder itself: ``labels.csv`` names the categories,
    #: ``image_labels.csv`` makes its categories whole-image ones
    kinds: ClassVar[dict[str, Kind]] = {}
    Options = FolderOptions
    options: FolderOptions

    def __init__(self, options: RootOptions, categories: Sequence[str] | None = None):
        assert isinstance(options, FolderOptions)
        root = options.root
        if not root.is_dir():
            raise SourceError(f"folder: {root} is not a folder (see the folder adapter's layout)")
        self._vocab = read_labels_csv(root / LABELS_CSV)
        rows_path = root / IMAGE_LABELS_CSV
        self._rows = read_image_labels_csv(rows_path, self._vocab) if rows_path.exists() else []
        whole_image = {r.category for r in self._rows}
        self._kinds: dict[str, Kind] = {
            c: ("image" if c in whole_image else "pixel")
            for c in sorted(self._vocab, key=category_sort_key)
        }
        super().__init__(options, categories)
        self.categories  # noqa: B018 - check the request against labels.csv now

    def supplied_kinds(self) -> dict[str, Kind]:
        return self._kinds

    def supplies_text(self) -> str:
        return f"{self.options.root / LABELS_CSV} declares"

    # -- index ----------------------------------------------------------------------------

    @cached_property
    def _entries(self) -> list[_Entry]:
        return self._scan()

    def _scan(self) -> list[_Entry]:
        root = self.options.root
        images_dir = root / "images"
        if not images_dir.is_dir():
            raise SourceError(f"folder: {images_dir} is missing (the images go there)")
        rels = [r for r in _walk(images_dir) if r.lower().endswith(IMAGE_EXTENSIONS)]
        if not rels:
            raise SourceError(f"folder: {images_dir} holds no .jpg, .jpeg or .png images")
        entries: dict[str, _Entry] = {}  # by path without extension
        for rel in rels:
            stem = str(PurePosixPath(rel).with_suffix(""))
            if stem in entries:
                raise SourceError(
                    f"folder: images {entries[stem].rel} and {rel} have the same name; label "
                    "files could not tell them apart"
                )
            entries[stem] = _Entry(rel)
        self._scan_labels(root / "labels", entries)
        self._scan_masks(root / "masks", entries)
        by_rel = {e.rel: e for e in entries.values()}
        for row in self._rows:
            entry = by_rel.get(row.image) or entries.get(row.image)
            if entry is None:
                raise SourceError(
                    f"folder: {root / IMAGE_LABELS_CSV}:{row.line}: image {row.image} is not "
                    f"in {images_dir}"
                )
            entry.image_labels[row.category] = row.ids
        return sorted(entries.values(), key=lambda e: e.rel)

    def _scan_labels(self, labels_dir: Path, entries: dict[str, _Entry]) -> None:
        pixel_cats = [c for c, k in self._kinds.items() if k == "pixel"]
        image_cats = [c for c, k in self._kinds.items() if k == "image"]
        if not labels_dir.is_dir():
            if pixel_cats and not (labels_dir.parent / "masks").is_dir():
                raise SourceError(
                    f"folder: {labels_dir} (label maps) and masks/ (per-concept masks) are "
                    f"missing; {LABELS_CSV} has per-pixel categories {pixel_cats} "
                    f"(whole-image categories are those in {IMAGE_LABELS_CSV})"
                )
            return
        found: dict[tuple[str, str], dict[int, str]] = {}  # (stem, cat) -> layer -> file
        for rel in _walk(labels_dir):
            if not rel.lower().endswith(".png"):
                raise SourceError(f"folder: {labels_dir / rel}: label maps must be .png files")
            name = rel[: -len(".png")]
            parses = [p for p in _parse_label_name(name, pixel_cats) if p[0] in entries]
            if not parses:
                whole = [c for c in image_cats if name.endswith("_" + c)]
                why = (
                    f"category {whole[0]!r} is a whole-image category ({IMAGE_LABELS_CSV})"
                    if whole
                    else "expected <image>_<category>.png or <image>_<category>_<k>.png "
                    f"naming an image in images/ and a category of {LABELS_CSV} "
                    f"(per-pixel: {pixel_cats})"
                )
                raise SourceError(f"folder: {labels_dir / rel}: {why}")
            if len(parses) > 1:
                raise SourceError(
                    f"folder: {labels_dir / rel}: the name is ambiguous "
                    f"({' or '.join(f'image {s}, category {c}' for s, c, _ in parses)})"
                )
            stem, cat, k = parses[0]
            found.setdefault((stem, cat), {})[k] = rel
        for (stem, cat), layers in sorted(found.items()):
            if 0 in layers and len(layers) > 1:
                raise SourceError(
                    f"folder: {labels_dir}: {stem} has both {stem}_{cat}.png and numbered "
                    f"{cat} layers; use one form"
                )
            numbers = sorted(layers)
            if 0 not in layers and numbers != list(range(1, len(numbers) + 1)):
                raise SourceError(
                    f"folder: {labels_dir}: the {cat} layers of {stem} are numbered {numbers}; "
                    "number them 1, 2, ... without gaps"
                )
            entries[stem].layers[cat] = [layers[k] for k in numbers]

    def _scan_masks(self, masks_dir: Path, entries: dict[str, _Entry]) -> None:
        """Check and index ``masks/<image stem>/<category>/<id>[_<tag>].png``."""
        if not masks_dir.is_dir():
            return
        layout = "masks/<image path without extension>/<category>/<id>.png or <id>_<tag>.png"
        for rel in _walk(masks_dir):  # sorted: masks of one image and category by file name
            path = masks_dir / rel
            parts = rel.split("/")
            if not rel.lower().endswith(".png"):
                raise SourceError(f"folder: {path}: masks must be .png files ({layout})")
            if len(parts) < 3:
                raise SourceError(f"folder: {path}: misplaced mask; expected {layout}")
            stem, cat, name = "/".join(parts[:-2]), parts[-2], parts[-1]
            if stem not in entries:
                bare = PurePosixPath(stem).with_suffix("").as_posix()
                hint = (
                    f"; name the folder {bare}, without the extension"
                    if bare in entries and entries[bare].rel == stem
                    else ""
                )
                raise SourceError(
                    f"folder: {path}: no image {stem}.jpg/.jpeg/.png in images/ ({layout}){hint}"
                )
            kind = self._kinds.get(cat)
            if kind is None:
                pixel_cats = [c for c, k in self._kinds.items() if k == "pixel"]
                raise SourceError(
                    f"folder: {path}: category {cat!r} is not in {LABELS_CSV} "
                    f"(per-pixel: {pixel_cats})"
                )
            if kind == "image":
                raise SourceError(
                    f"folder: {path}: category {cat!r} is a whole-image category "
                    f"({IMAGE_LABELS_CSV}); masks are for per-pixel categories"
                )
            m = MASK_NAME.match(name)
            if m is None:
                raise SourceError(
                    f"folder: {path}: bad mask file name {name!r}; expected <id>.png or "
                    f"<id>_<tag>.png with <id> a {cat} id of {LABELS_CSV}"
                )
            label = int(m.group(1))
            if label not in self._vocab[cat]:
                raise SourceError(
                    f"folder: {path}: id {label} is not in {LABELS_CSV} for category {cat} "
                    f"(its ids: {sorted(self._vocab[cat])[:10]})"
                )
            entries[stem].masks.setdefault(cat, []).append((label, rel))

    # -- adapter duties -------------------------------------------------------------------

    def check(self) -> None:
        _ = self._entries  # reading the listing checks it

    def vocabulary(self) -> dict[str, dict[int, list[str]]]:
        return {c: dict(self._vocab[c]) for c in self.categories}

    def __len__(self) -> int:
        return len(self._entries)

    def source_id(self, index: int) -> str:
        return self._entries[index].rel

    def load(self, index: int) -> SourceSample:
        entry = self._entries[index]
        root = self.options.root
        image = read_image(root / "images" / entry.rel)
        sample = SourceSample(source_id=entry.rel, image=image)
        shape = (image.shape[0], image.shape[1])
        for cat in self.categories:
            if self._kinds[cat] == "pixel" and (cat in entry.layers or cat in entry.masks):
                layers = [
                    self._label_map(root / "labels" / f, cat, entry.rel, shape)
                    for f in entry.layers.get(cat, [])
                ]
                for label, f in entry.masks.get(cat, []):
                    path = root / "masks" / f
                    mask = decode_mask_png(read_png(path), path)
                    require_same_size(path, "the mask", mask.shape, entry.rel, shape)
                    box = _bounding_box(mask)
                    if box is not None:
                        paint_layers(layers, label, mask[box], box, shape)
                sample.pixel[cat] = np.stack(layers) if layers else np.zeros((1, *shape), np.uint16)
            elif self._kinds[cat] == "image" and cat in entry.image_labels:
                sample.image_labels[cat] = list(entry.image_labels[cat])
        return sample

    def _label_map(
        self, path: Path, category: str, image_rel: str, shape: tuple[int, ...]
    ) -> np.ndarray:
        ids = decode_label_png(read_png(path), path)
        require_same_size(path, "the label map", ids.shape, image_rel, shape)
        present = np.flatnonzero(np.bincount(ids.ravel()))
        known = self._vocab[category]
        unknown = [int(v) for v in present if v and int(v) not in known]
        if unknown:
            raise SampleError(
                f"{path}: pixel values {unknown[:5]} are not {category} ids of {LABELS_CSV}"
            )
        return ids

    # -- description ----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "adapter": self.name,
            "categories": list(self.categories),
            "title": self.options.title or self.options.root.name,
            "license": self.options.license,
            "citation": self.options.citation,
        }


def _parse_label_name(name: str, categories: list[str]) -> list[tuple[str, str, int]]:
    """Every reading of a label file name (without .png) as (image stem, category, layer);
    layer 0 = the single-layer form."""
    out = []
    for c in categories:
        if name.endswith("_" + c) and len(name) > len(c) + 1:
            out.append((name[: -len(c) - 1], c, 0))
        m = re.fullmatch(rf"(.+)_{re.escape(c)}_(\d+)", name)
        if m:
            out.append((m.group(1), c, int(m.group(2))))
    return out
