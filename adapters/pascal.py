"""Pascal VOC 2010 images with Pascal-Context objects and Pascal-Part parts, as in Broden.

One image set, two annotation sets read together (a pixel can be a ``cat`` object and
a ``leg`` part at once). Written against these releases, each unpacked in its own
folder (the three config keys; ``context`` or ``parts`` may be left out, not both)::

    images:  VOCdevkit/VOC2010/JPEGImages/          VOCtrainval_03-May-2010.tar
               2008_000652.jpg ...                   (11,321 JPEGs)
    context: pascal-context/                        Pascal-Context trainval.tar.gz
               labels.txt                            "N: name" for N = 1..459
               trainval/2008_000652.mat ...          variable LabelMap: uint16 H×W, 1..459
    parts:   pascal-part/                           Pascal-Part trainval.tar.gz (UCLA)
               part2ind.m                            the part table (optional, see below)
               Annotations_Part/2008_000652.mat ...  struct anno: imname, objects

**Images.** With ``parts`` configured, the images are those with a part annotation
``Annotations_Part/<id>.mat`` (Broden's rule: 10,103 images), sorted by id; with only
``context``, those with a ``trainval/<id>.mat``. The photo is ``images/<id>.jpg``.
``source_id`` is the VOC image id (``2008_000652``).

**Objects** (category ``object``, from ``context``) are the LabelMap values; local id =
the ``labels.txt`` number. Label 431 ``unknown`` is unlabeled: its pixels become 0 and
it is not in the vocabulary (0 itself, which the release does not use, is unlabeled
too). The object masks inside the Pascal-Part files are ignored, as Broden did.

**Parts** (category ``part``, from ``parts``): ``loadmat(f)['anno'][0, 0]['objects']``
is a 1×K struct array (``class``, ``class_ind`` 1..20 in VOC order, ``mask``,
``parts``: 1×P struct array of ``part_name`` and ``mask``, 0×0 without parts). The
parts of all instances are painted into one part map in file order, later over
earlier, instance identity discarded (Broden's rule). The silhouette-only classes
(boat, chair, table, sofa) have no part masks and contribute no part pixels.

Part names come from the part table: the release's own ``part2ind.m`` when the parts
folder holds it (parsed by :func:`parse_part2ind`), else the bundled transcription
``data_manifests/pascal_part_parts.csv``. A code's readable name is its description
(the ``% comment`` of its part2ind.m line), short codes the file leaves unexplained
expanded (``lfho`` → "left front hoof", ``fwheel`` → "front wheel", ``fliplate`` →
"front license plate", ...), 'aeroplane' → 'airplane', and the positional words
left/right/front/back/upper/lower/side removed (``lfleg`` → "leg", ``hfrontside`` →
"head"), as Broden did. Two deliberate differences from Broden: where removing them
leaves nothing (the bus and car faces ``frontside``, ``leftside``, ...), the last word
is kept ("side") instead of an empty name; and ``handlebar`` is expanded to "handle
bar" like its bicycle twin. As in Broden, there is one local part id per (object
class, readable name), named with the bare part name: "cat leg" and "dog leg" are two
ids both named "leg" (the build merges them by name), and ``engine_1`` ...
``engine_10`` are one id. A part code that the table does not list for the
instance's class fails the sample.

**part_of**: each part id present in the painted map is recorded as part of the
Pascal-Context label of its object class (``table`` for VOC's diningtable), with its
pixel count on the final map. Only when ``context`` is configured: without it there
is no object vocabulary for the edges to point into.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from broden.adapters.base import (
    Adapter,
    AdapterOptions,
    PartOf,
    SampleError,
    SourceError,
    SourceSample,
)
from broden.adapters.decode import load_mat, read_image, require_same_size
from broden.adapters.files import file_text, open_text
from broden.adapters.manifest import load_manifest

#: The 20 PASCAL VOC classes in the standard order (``class_ind`` 1..20).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

#: Pascal-Context label names of VOC classes whose names differ there.
CONTEXT_NAMES: dict[str, str] = {"diningtable": "table"}

#: Words Broden removed from part names (``joinseg.py``'s collapse_adjectives).
POSITIONAL_WORDS: frozenset[str] = frozenset(
    {"left", "right", "front", "back", "upper", "lower", "side"}
)

#: Readable names of part codes that part2ind.m leaves without a comment.
SHORT_CODES: dict[str, str] = {
    "lfho": "left front hoof",
    "rfho": "right front hoof",
    "lbho": "left back hoof",
    "rbho": "right back hoof",
    "fwheel": "front wheel",
    "bwheel": "back wheel",
    "frontside": "front side",
    "leftside": "left side",
    "rightside": "right side",
    "backside": "back side",
    "roofside": "roof side",
    "leftmirror": "left mirror",
    "rightmirror": "right mirror",
    "fliplate": "front license plate",
    "bliplate": "back license plate",
    "handlebar": "handle bar",
    "chainwheel": "chain wheel",
}

UNKNOWN_CONTEXT_LABEL = "unknown"


@dataclass(frozen=True)
class PartCode:
    """One row of the Pascal-Part part table."""

    class_index: int  # 1..20, VOC order
    code: str  # as in the .mat files: 'lfleg', 'engine_3'
    index: int  # part2ind.m's part number (not used for naming)
    description: str  # the readable text of part2ind.m ('left front leg'), or the code


# -- part table ----------------------------------------------------------------------------

_ASSIGN = re.compile(r"^pimap\{(\d+)\}\('([^']+)'\)\s*=\s*(\d+)\s*;$")
_LOOP_ASSIGN = re.compile(
    r"^pimap\{(\d+)\}\(sprintf\('([^'%]+)%d'\s*,\s*(\w+)\)\)\s*=\s*(\d+)\s*\+\s*(\w+)\s*;$"
)
_FOR = re.compile(r"^for\s+(\w+)\s*=\s*(\d+)\s*:\s*(\d+)$")
_KEYS = re.compile(r"^keySet\s*=\s*keys\(pimap\{(\d+)\}\)\s*;$")
_VALUES = re.compile(r"^valueSet\s*=\s*values\(pimap\{(\d+)\}\)\s*;$")
_COPY = re.compile(r"^pimap\{(\d+)\}\s*=\s*containers\.Map\(\s*keySet\s*,\s*valueSet\s*\)\s*;$")
_REMOVE = re.compile(r"^remove\(pimap\{(\d+)\}\s*,\s*\{([^}]*)\}\)\s*;$")
_IGNORED = (
    re.compile(r"^function\b.*$"),
    re.compile(r"^pimap\s*=\s*cell\(.*\)\s*;$"),
    re.compile(r"^pimap\{\w+\}\s*=\s*containers\.Map\('KeyType'.*\)\s*;$"),
)


def _split_comment(line: str) -> tuple[str, str]:
    """(statement, comment text) of a MATLAB line; '%' inside quotes is not a comment."""
    in_quote = False
    for i, ch in enumerate(line):
        if ch == "'":
            in_quote = not in_quote
        elif ch == "%" and not in_quote:
            return line[:i].strip(), line[i + 1 :].strip()
    return line.strip(), ""


def parse_part2ind(text: str, origin: str = "part2ind.m") -> list[PartCode]:
    """Parse the Pascal-Part release's ``part2ind.m`` into its part table.

    Understands the statements the release uses: ``pimap{c}('code') = n; % description``,
    ``for ii = a:b`` loops over ``pimap{c}(sprintf('code_%d', ii)) = n + ii; % text``
    (codes ``code_a`` .. ``code_b``; a text saying "multiple ..." is not a description),
    the ``keySet = keys(pimap{a}); valueSet = values(pimap{a}); pimap{b} =
    containers.Map(keySet, valueSet);`` copies, and ``remove(pimap{c}, {'x', 'y'});``.
    Comment lines and the map initialisation are skipped; anything else raises
    :class:`SourceError` naming the line. Rows come in class order, then file order.
    """
    maps: dict[int, dict[str, tuple[int, str]]] = {}
    loop: tuple[str, int, int] | None = None
    copy_from: dict[str, int] = {}

    def fail(lineno: int, line: str, why: str) -> SourceError:
        return SourceError(f"{origin}:{lineno}: {why}: {line.strip()!r}")

    def check_class(c: int, lineno: int, line: str) -> int:
        if not 1 <= c <= len(VOC_CLASSES):
            raise fail(lineno, line, f"class index {c} is not in 1..{len(VOC_CLASSES)}")
        return c

    for lineno, line in enumerate(text.splitlines(), 1):
        stmt, comment = _split_comment(line)
        if not stmt:
            continue
        if m := _ASSIGN.match(stmt):
            c = check_class(int(m[1]), lineno, line)
            code = m[2]
            maps.setdefault(c, {})[code] = (int(m[3]), comment or code)
        elif m := _FOR.match(stmt):
            if loop is not None:
                raise fail(lineno, line, "nested for loops are not supported")
            loop = (m[1], int(m[2]), int(m[3]))
        elif stmt == "end":
            if loop is None:
                raise fail(lineno, line, "'end' without a for loop")
            loop = None
        elif m := _LOOP_ASSIGN.match(stmt):
            if loop is None or m[3] != loop[0] or m[5] != loop[0]:
                raise fail(lineno, line, "sprintf part code outside its for loop")
            c = check_class(int(m[1]), lineno, line)
            base = m[2].rstrip("_")
            text_ = comment if comment and "multiple" not in comment.lower() else base
            for k in range(loop[1], loop[2] + 1):
                maps.setdefault(c, {})[f"{m[2]}{k}"] = (int(m[4]) + k, text_)
        elif m := _KEYS.match(stmt):
            copy_from["keys"] = int(m[1])
        elif m := _VALUES.match(stmt):
            copy_from["values"] = int(m[1])
        elif m := _COPY.match(stmt):
            src = copy_from.get("keys")
            if src is None or copy_from.get("values") != src:
                raise fail(lineno, line, "containers.Map copy without matching keySet/valueSet")
            c = check_class(int(m[1]), lineno, line)
            maps[c] = dict(maps.get(src, {}))
        elif m := _REMOVE.match(stmt):
            c = check_class(int(m[1]), lineno, line)
            for code in re.findall(r"'([^']+)'", m[2]):
                maps.get(c, {}).pop(code, None)
        elif any(p.match(stmt) for p in _IGNORED):
            continue
        else:
            raise fail(lineno, line, "unrecognised statement")
    if loop is not None:
        raise SourceError(f"{origin}: a for loop is not closed by 'end'")
    rows = [
        PartCode(c, code, index, desc)
        for c in sorted(maps)
        for code, (index, desc) in maps[c].items()
    ]
    if not rows:
        raise SourceError(f"{origin}: no part codes found (expected pimap{{c}}('code') = n;)")
    return rows


def read_part_table_csv(path: Path) -> list[PartCode]:
    """Read a part table CSV (``class_index,class,part_code,part_index,description``)."""
    try:
        with open_text(path) as f:
            reader = csv.DictReader(f)
            need = {"class_index", "part_code", "part_index", "description"}
            missing = need - set(reader.fieldnames or ())
            if missing:
                raise SourceError(f"{path}: missing columns {sorted(missing)}")
            rows = []
            for lineno, row in enumerate(reader, 2):
                try:
                    rows.append(
                        PartCode(
                            int(row["class_index"]),
                            row["part_code"].strip(),
                            int(row["part_index"]),
                            row["description"].strip() or row["part_code"].strip(),
                        )
                    )
                except (TypeError, ValueError):
                    raise SourceError(f"{path}:{lineno}: malformed row {row}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: cannot read the part table ({e})") from None
    return rows


def bundled_part_table() -> list[PartCode]:
    """The part table shipped in ``data_manifests/pascal_part_parts.csv``."""
    with resources.as_file(
        resources.files("broden.data_manifests").joinpath("pascal_part_parts.csv")
    ) as path:
        return read_part_table_csv(path)


def readable_part_name(code: str, description: str) -> str:
    """Broden's part name of a part code: readable, positional words removed.

    >>> readable_part_name("lfleg", "left front leg")
    'leg'
    >>> readable_part_name("fliplate", "fliplate")
    'license plate'
    >>> readable_part_name("frontside", "frontside")
    'side'
    """
    base = re.sub(r"_\d+$", "", code)
    text = description.strip()
    if not text or text in (code, base):
        text = SHORT_CODES.get(base, base)
    text = text.replace("aeroplane", "airplane")
    words = text.split()
    kept = [w for w in words if w not in POSITIONAL_WORDS]
    return " ".join(kept or words[-1:])


def read_context_labels(path: Path) -> dict[int, str]:
    """Pascal-Context ``labels.txt``: ``N: name`` lines → {N: name}."""
    try:
        text = file_text(path)
    except FileNotFoundError:
        raise SourceError(f"Pascal-Context: {path} is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"Pascal-Context: cannot read {path} ({e})") from None
    labels: dict[int, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        number, sep, name = line.partition(":")
        if not sep or not number.strip().isdigit() or not name.strip():
            raise SourceError(f"Pascal-Context: {path}:{lineno}: expected 'N: name', got {line!r}")
        n = int(number)
        if n == 0 or n in labels:
            raise SourceError(
                f"Pascal-Context: {path}:{lineno}: label number {n} is "
                + ("reserved for unlabeled" if n == 0 else "listed twice")
            )
        labels[n] = name.strip()
    if not labels:
        raise SourceError(f"Pascal-Context: {path} lists no labels")
    return labels


# -- the adapter ---------------------------------------------------------------------------


class PascalOptions(AdapterOptions):
    """Three folders instead of ``root`` (see the module docstring)."""

    images: Path = Field(description="the VOC2010 JPEGImages/ folder")
    context: Path | None = Field(
        None, description="Pascal-Context folder holding labels.txt and trainval/ (objects)"
    )
    parts: Path | None = Field(
        None, description="Pascal-Part folder holding Annotations_Part/ (parts)"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_root(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("root") is not None:
            raise ValueError(
                "pascal has no `root`: give `images` (the VOC2010 JPEGImages folder) and "
                "`context` (Pascal-Context) and/or `parts` (Pascal-Part)"
            )
        return data

    @model_validator(mode="after")
    def _one_annotation_set(self) -> PascalOptions:
        if self.context is None and self.parts is None:
            raise ValueError(
                "pascal needs `context` (Pascal-Context objects) or `parts` (Pascal-Part "
                "parts), or both"
            )
        return self


@dataclass
class _Index:
    ids: list[str]
    context_labels: dict[int, str]  # labels.txt without 'unknown'; {} without context
    context_lut: np.ndarray | None  # LabelMap value -> local object id (0 = unlabeled)
    context_valid: np.ndarray | None  # LabelMap value -> listed in labels.txt (or 0)
    part_key: dict[tuple[int, str], int]  # (class_ind, part code) -> local part id
    part_names: dict[int, str]  # local part id -> name
    part_parent: dict[int, int]  # local part id -> context local id of its class


class Pascal(Adapter):
    """Pascal VOC 2010 with Pascal-Context objects and Pascal-Part parts."""

    name = "pascal"
    kinds = {"object": "pixel", "part": "pixel"}
    Options = PascalOptions
    manifest_name = "pascal"
    options: PascalOptions

    def __init__(self, options: AdapterOptions, categories: Sequence[str] | None = None):
        super().__init__(options, categories)
        assert isinstance(options, PascalOptions)
        have = {"object": options.context is not None, "part": options.parts is not None}
        if categories is None:
            self.categories = tuple(c for c in self.categories if have[c])
        else:
            lacking = [c for c in self.categories if not have[c]]
            if lacking:
                key = {"object": "context", "part": "parts"}
                raise SourceError(
                    f"pascal: category {lacking[0]!r} needs the `{key[lacking[0]]}` folder, "
                    "which the config does not give"
                )

    # -- index ----------------------------------------------------------------------------

    @cached_property
    def _index(self) -> _Index:
        return self._build_index()

    def _folder(self, path: Path, what: str) -> Path:
        download = load_manifest("pascal").download
        if not path.exists():
            raise SourceError(f"Pascal: {what} folder {path} does not exist.\n{download}")
        if not path.is_dir():
            raise SourceError(f"Pascal: {what} {path} is not a folder.\n{download}")
        return path

    def _build_index(self) -> _Index:
        opts = self.options
        self._folder(opts.images, "images (VOC2010 JPEGImages)")
        labels: dict[int, str] = {}
        lut: np.ndarray | None = None
        valid: np.ndarray | None = None
        if opts.context is not None:
            self._folder(opts.context, "Pascal-Context")
            self._folder(opts.context / "trainval", "Pascal-Context trainval")
            raw = read_context_labels(opts.context / "labels.txt")
            lut = np.zeros(max(raw) + 1, np.uint16)
            valid = np.zeros(max(raw) + 1, bool)
            valid[0] = True  # not used by the release; unlabeled if present
            valid[list(raw)] = True
            for n, label in raw.items():
                if label != UNKNOWN_CONTEXT_LABEL:
                    labels[n] = label
                    lut[n] = n
        part_key: dict[tuple[int, str], int] = {}
        part_names: dict[int, str] = {}
        part_parent: dict[int, int] = {}
        if opts.parts is not None:
            ann = self._folder(opts.parts / "Annotations_Part", "Pascal-Part Annotations_Part")
            ids = sorted(p.stem for p in ann.glob("*.mat"))
            m_file = opts.parts / "part2ind.m"
            if m_file.exists():
                try:
                    text = file_text(m_file)
                except (OSError, UnicodeDecodeError) as e:
                    raise SourceError(f"Pascal-Part: cannot read {m_file} ({e})") from None
                table = parse_part2ind(text, str(m_file))
            else:
                table = bundled_part_table()
            by_name = {label: n for n, label in labels.items()}
            ids_by_name: dict[tuple[int, str], int] = {}
            for row in table:
                readable = readable_part_name(row.code, row.description)
                pid = ids_by_name.setdefault((row.class_index, readable), len(ids_by_name) + 1)
                part_key[(row.class_index, row.code)] = pid
                part_names[pid] = readable
                if opts.context is not None and pid not in part_parent:
                    voc = VOC_CLASSES[row.class_index - 1]
                    parent = by_name.get(CONTEXT_NAMES.get(voc, voc))
                    if parent is None:
                        raise SourceError(
                            f"Pascal-Context: {opts.context / 'labels.txt'} has no label for "
                            f"the Pascal-Part class {voc!r}"
                        )
                    part_parent[pid] = parent
        else:
            assert opts.context is not None
            ids = sorted(p.stem for p in (opts.context / "trainval").glob("*.mat"))
        if not ids:
            where = "Annotations_Part" if opts.parts is not None else "trainval"
            folder = opts.parts if opts.parts is not None else opts.context
            raise SourceError(f"Pascal: no .mat annotation files in {folder}/{where}")
        return _Index(ids, labels, lut, valid, part_key, part_names, part_parent)

    # -- adapter duties -------------------------------------------------------------------

    def check(self) -> None:
        _ = self._index  # building the index reads and checks the source

    def release_version(self) -> str | None:
        sets = ["VOC2010"]
        if self.options.context is not None:
            sets.append("Pascal-Context trainval")
        if self.options.parts is not None:
            sets.append("Pascal-Part trainval")
        return " + ".join(sets)

    def vocabulary(self) -> dict[str, dict[int, list[str]]]:
        idx = self._index
        vocab: dict[str, dict[int, list[str]]] = {}
        if "object" in self.categories:
            vocab["object"] = {n: [label] for n, label in idx.context_labels.items()}
        if "part" in self.categories:
            vocab["part"] = {pid: [name] for pid, name in idx.part_names.items()}
        return vocab

    def __len__(self) -> int:
        return len(self._index.ids)

    def source_id(self, index: int) -> str:
        return self._index.ids[index]

    def load(self, index: int) -> SourceSample:
        idx = self._index
        image_id = idx.ids[index]
        jpg = self.options.images / f"{image_id}.jpg"
        image = read_image(jpg)
        shape = image.shape[:2]
        sample = SourceSample(source_id=image_id, image=image)
        if "object" in self.categories:
            assert self.options.context is not None
            assert idx.context_lut is not None and idx.context_valid is not None
            path = self.options.context / "trainval" / f"{image_id}.mat"
            objects = _context_objects(path, idx.context_lut, idx.context_valid, shape, jpg)
            sample.pixel["object"] = objects[None]
        if "part" in self.categories:
            assert self.options.parts is not None
            path = self.options.parts / "Annotations_Part" / f"{image_id}.mat"
            part_map = _paint_parts(path, idx.part_key, shape, jpg)
            present = np.bincount(part_map.ravel())
            if len(present) > 1:
                sample.pixel["part"] = part_map[None]
                if idx.part_parent:
                    sample.part_of = [
                        PartOf("part", int(p), "object", idx.part_parent[int(p)], int(present[p]))
                        for p in np.flatnonzero(present[1:]) + 1
                    ]
        return sample


def _context_objects(
    path: Path, lut: np.ndarray, valid: np.ndarray, shape: tuple[int, ...], jpg: Path
) -> np.ndarray:
    """The LabelMap of a Pascal-Context .mat as local object ids (uint16 H×W)."""
    mat = load_mat(path)
    if "LabelMap" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise SampleError(f"{path}: no variable 'LabelMap' (found {found})")
    label_map = np.asarray(mat["LabelMap"])
    if label_map.dtype.kind not in "ui":
        raise SampleError(
            f"{path}: LabelMap has dtype {label_map.dtype}; expected integer label numbers (uint16)"
        )
    if label_map.ndim != 2:
        raise SampleError(f"{path}: LabelMap has shape {label_map.shape}; expected H×W")
    require_same_size(path, "LabelMap", label_map.shape, jpg.name, shape)
    values = np.unique(label_map)
    bad = [int(v) for v in values if v < 0 or v >= len(valid) or not valid[v]]
    if bad:
        raise SampleError(
            f"{path}: LabelMap values {bad[:5]} are not label numbers of labels.txt "
            f"(1..{len(lut) - 1})"
        )
    return lut[label_map]


def _paint_parts(
    path: Path, part_key: dict[tuple[int, str], int], shape: tuple[int, ...], jpg: Path
) -> np.ndarray:
    """All part masks of a Pascal-Part .mat painted in file order into one uint16 map."""
    mat = load_mat(path)
    part_map = np.zeros(shape, np.uint16)
    try:
        objects = mat["anno"][0, 0]["objects"]
        n_objects = objects.shape[1] if objects.size else 0
        for k in range(n_objects):
            obj = objects[0, k]
            class_ind = int(np.asarray(obj["class_ind"]).ravel()[0])
            if not 1 <= class_ind <= len(VOC_CLASSES):
                raise SampleError(f"{path}: object {k + 1} has class_ind {class_ind}, not 1..20")
            parts = obj["parts"]
            n_parts = parts.shape[1] if parts.size else 0
            for j in range(n_parts):
                part = parts[0, j]
                code = str(np.asarray(part["part_name"]).ravel()[0])
                pid = part_key.get((class_ind, code))
                if pid is None:
                    raise SampleError(
                        f"{path}: object {k + 1} ({VOC_CLASSES[class_ind - 1]}) has part "
                        f"{code!r}, which the part table does not list for that class"
                    )
                mask = np.asarray(part["mask"])
                require_same_size(path, f"mask of part {code!r}", mask.shape, jpg.name, shape)
                part_map[mask > 0] = pid
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise SampleError(
            f"{path}: unexpected Pascal-Part annotation structure (expected anno.objects with "
            f"class_ind and parts.part_name/mask; {type(e).__name__}: {e})"
        ) from None
    return part_map
