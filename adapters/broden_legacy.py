"""A released Broden dataset (broden1_224, broden1_227 or broden1_384), imported as is.

Written against the layout NetDissect's ``joinseg.py`` wrote for the broden1 releases
(``http://netdissect.csail.mit.edu/data/broden1_{224,227,384}.zip``, generated 2017-04-24;
the site has been unreachable since 2022). ``root`` is the unpacked release folder::

    broden1_224/
      README.txt                      generation parameters (read for the release name only)
      index.csv                       image,split,ih,iw,sh,sw,<categories: color,object,...>
      label.csv                       number,name,category,frequency,coverage,syns
      category.csv                    name,first,last,count,frequency   (rows by first number)
      c_color.csv c_object.csv ...    code,number,name,frequency,coverage (one per category)
      images/
        ade20k/ADE_train_00000001.jpg             the image, S×S
        ade20k/ADE_train_00000001_color.png       one label layer, S/2 × S/2: number = R + 256·G
        ade20k/ADE_train_00000001_object.png
        ade20k/ADE_train_00000001_part_1.png      layered categories: _<category>_<k>.png
        ade20k/ADE_train_00000001_part_2.png
        pascal/2008_000001_part.png               (Pascal parts are one layer)
        dtd/ opensurfaces/ ...

A release is already a merged concept set, so this adapter keeps it: its label numbers
are the store's concept ids, its names (exactly as in ``label.csv``) and categories are
the store's, and its images and label maps are taken at the release's own size
(:meth:`BrodenLegacy.prebuilt`). Samples follow ``index.csv``'s row order.

- Categories and their kind come from the release: ``category.csv`` lists them (the
  class attribute ``kinds`` shows the broden1 set, which ``broden adapters`` lists); a
  category whose ``index.csv`` cells hold numbers is per-image, one whose cells hold PNG
  names is per-pixel (NetDissect's loader rule: a purely numeric token is a label).
- Pixel cells: the ';'-separated PNGs of one category are its layers (K = number of
  files); each is decoded R + 256·G into global label numbers (B is unused).
- Whole-image cells: ';'-separated numbers, dominant first. ``joinseg.py`` tested the
  *source's* label for zero, so a scene dropped by the rarity filter was written as "0":
  a "0" is read as no label.
- ``source_id`` is the image's path under ``images/``, datasource folder first
  (``ade20k/ADE_train_00000001.jpg``); the store's ``meta/source`` is the config's source
  name (one source: a release must be its config's only source). The export
  (:mod:`broden.legacy`) writes such images back under their own path.
- The concept table (:meth:`BrodenLegacy.prebuilt`): per label, its categories in
  ``label.csv`` order with the frequency of that column and the coverage of
  ``c_<category>.csv``; primary category = the one with the largest coverage, ties to the
  category later in ``category.csv`` (as NetDissect's loaders chose it); synonyms =
  ``syns`` split on ';'.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from broden.adapters.base import (
    Adapter,
    Prebuilt,
    RootOptions,
    SampleError,
    SourceError,
    SourceSample,
)
from broden.adapters.categories import Kind
from broden.adapters.decode import read_image, read_png_rgb
from broden.adapters.files import open_text

#: The categories of the broden1 releases, in their ``category.csv`` order, with kinds.
BRODEN1_KINDS: dict[str, Kind] = {
    "color": "pixel",
    "object": "pixel",
    "part": "pixel",
    "material": "pixel",
    "scene": "image",
    "texture": "image",
}

INDEX_FIELDS = ("image", "split", "ih", "iw", "sh", "sw")
LABEL_FIELDS = ("number", "name", "category", "frequency", "coverage", "syns")
CATEGORY_FIELDS = ("name", "first", "last", "count", "frequency")
CODE_FIELDS = ("code", "number", "name", "frequency", "coverage")

_CAT_FREQ = re.compile(r"(.+)\((\d+)\)")
_TITLE = "Broden release"
_WHAT = {"image": "label numbers", "pixel": "PNG names"}


@dataclass
class _Index:
    """index.csv by column (compact to pickle for the build's worker processes)."""

    images: list[str]  # path under images/, e.g. "ade20k/ADE_train_00000001.jpg"
    splits: list[str]
    cells: list[tuple[str, ...]]  # per category (category.csv order): the raw cell


@dataclass
class _Label:
    number: int
    name: str
    categories: list[tuple[str, int]]  # label.csv's `category` column, in its order
    frequency: int
    coverage: float
    synonyms: list[str]
    category_coverage: dict[str, float] = field(default_factory=dict)  # from c_<cat>.csv


@dataclass
class _Release:
    image_size: int
    label_size: int
    categories: list[str]  # category.csv order
    kinds: dict[str, Kind]
    labels: list[_Label]  # number 1..N in order
    members: dict[str, list[int]]  # category -> label numbers (c_<cat>.csv order)
    index: _Index
    version: str | None


class _ReleaseKinds:
    """``BrodenLegacy.kinds``: on the class, the broden1 categories (what ``broden adapters``
    lists); on an instance, the release's own categories and kinds, read from its files."""

    def __get__(self, obj: BrodenLegacy | None, owner: type | None = None) -> dict[str, Kind]:
        if obj is None:
            return dict(BRODEN1_KINDS)
        return dict(obj._release().kinds)


def _csv_rows(path: Path, fields: Sequence[str]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, row)]) of a CSV whose header must start with ``fields``;
    every row must have the header's number of fields (blank lines are skipped)."""
    try:
        with open_text(path) as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise SourceError(f"{_TITLE}: {path} is empty")
            if tuple(header[: len(fields)]) != tuple(fields):
                raise SourceError(
                    f"{_TITLE}: {path} has header {','.join(header)!r}; expected it to start "
                    f"with {','.join(fields)!r}"
                )
            rows = []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise SourceError(
                        f"{_TITLE}: {path}:{reader.line_num}: {len(row)} fields, but the header "
                        f"has {len(header)}"
                    )
                rows.append((reader.line_num, row))
            return header, rows
    except FileNotFoundError:
        raise SourceError(f"{_TITLE}: {path} is missing") from None
    except UnicodeDecodeError as e:
        raise SourceError(f"{_TITLE}: {path} is not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise SourceError(f"{_TITLE}: {path}: not a readable CSV file ({e})") from None


def _read_csv(path: Path, fields: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row as a dict) of a CSV whose header must start with ``fields``."""
    header, rows = _csv_rows(path, fields)
    return [(line, dict(zip(header, row, strict=True))) for line, row in rows]


def _int(path: Path, line: int, column: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SourceError(
            f"{_TITLE}: {path}:{line}: column {column!r} should be an integer, got {value!r}"
        ) from None


def _float(path: Path, line: int, column: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise SourceError(
            f"{_TITLE}: {path}:{line}: column {column!r} should be a number, got {value!r}"
        ) from None


def _safe_relpath(token: str) -> bool:
    """A relative POSIX path that stays inside its folder."""
    return (
        bool(token)
        and not token.startswith("/")
        and "\\" not in token
        and (".." not in token.split("/"))
    )


def _is_number(token: str) -> bool:
    """NetDissect's loader rule: a purely numeric token is a label number."""
    return token.isascii() and token.isdigit()


class BrodenLegacy(Adapter):
    """A released broden1_224/227/384 folder, keeping its numbers, names and sizes."""

    name = "broden_legacy"
    kinds = _ReleaseKinds()  # type: ignore[assignment]
    Options = RootOptions
    options: RootOptions
    manifest_name = "broden_legacy"

    def supplied_kinds(self) -> dict[str, Kind]:
        """The release's categories in ``category.csv`` order (read on first use, after
        ``check()``), with their kind."""
        release = self._release()
        return {c: release.kinds[c] for c in release.categories}

    def supplies_text(self) -> str:
        return f"{_TITLE} {self.options.root} has"

    # -- reading the release ----------------------------------------------------------------

    def _release(self) -> _Release:
        cached: _Release | None = self.__dict__.get("_release_cache")
        if cached is None:
            cached = self._read_release()
            self._release_cache = cached
        return cached

    def _read_release(self) -> _Release:
        root = self.options.root
        if not root.is_dir():
            from broden.adapters.manifest import load_manifest

            m = load_manifest("broden_legacy")
            what = "does not exist" if not root.exists() else "is not a folder"
            raise SourceError(f"{m.title}: {root} {what}.\n{m.download}")
        categories = self._read_categories(root / "category.csv")
        labels = self._read_labels(root / "label.csv", categories)
        members = {c: self._read_codes(root / f"c_{c}.csv", c, labels) for c in categories}
        for lab in labels:
            for cat, _ in lab.categories:
                if cat not in lab.category_coverage:
                    raise SourceError(
                        f"{_TITLE}: label.csv lists label {lab.number} ({lab.name}) in category "
                        f"{cat!r}, but {root / f'c_{cat}.csv'} does not"
                    )
        index, size, label_size = self._read_index(root / "index.csv", categories)
        kinds = self._detect_kinds(root / "index.csv", categories, index)
        return _Release(
            image_size=size,
            label_size=label_size,
            categories=categories,
            kinds=kinds,
            labels=labels,
            members=members,
            index=index,
            version=self._version(root),
        )

    @staticmethod
    def _read_categories(path: Path) -> list[str]:
        names: list[str] = []
        for line, row in _read_csv(path, CATEGORY_FIELDS):
            name = row["name"]
            for col in CATEGORY_FIELDS[1:]:
                _int(path, line, col, row[col])
            if not name or name in names:
                raise SourceError(f"{_TITLE}: {path}:{line}: empty or repeated category {name!r}")
            names.append(name)
        if not names:
            raise SourceError(f"{_TITLE}: {path} lists no categories")
        return names

    @staticmethod
    def _read_labels(path: Path, categories: list[str]) -> list[_Label]:
        labels: list[_Label] = []
        names: set[str] = set()
        for line, row in _read_csv(path, LABEL_FIELDS):
            number = _int(path, line, "number", row["number"])
            if number != len(labels) + 1:
                raise SourceError(
                    f"{_TITLE}: {path}:{line}: label number {number}, expected "
                    f"{len(labels) + 1} (numbers must run 1, 2, ... without gaps, in order)"
                )
            name = row["name"]
            if not name or name in names:
                raise SourceError(f"{_TITLE}: {path}:{line}: empty or repeated name {name!r}")
            names.add(name)
            cats: list[tuple[str, int]] = []
            for entry in row["category"].split(";") if row["category"] else []:
                m = _CAT_FREQ.fullmatch(entry)
                if m is None or m.group(1) not in categories:
                    raise SourceError(
                        f"{_TITLE}: {path}:{line}: category entry {entry!r} is not "
                        f"'<category>(<frequency>)' with a category of category.csv "
                        f"({', '.join(categories)})"
                    )
                cats.append((m.group(1), int(m.group(2))))
            if not cats:
                raise SourceError(f"{_TITLE}: {path}:{line}: label {number} has no category")
            labels.append(
                _Label(
                    number=number,
                    name=name,
                    categories=cats,
                    frequency=_int(path, line, "frequency", row["frequency"]),
                    coverage=_float(path, line, "coverage", row["coverage"]),
                    synonyms=[s for s in row["syns"].split(";") if s],
                )
            )
        if not labels:
            raise SourceError(f"{_TITLE}: {path} lists no labels")
        return labels

    @staticmethod
    def _read_codes(path: Path, category: str, labels: list[_Label]) -> list[int]:
        numbers: list[int] = []
        for line, row in _read_csv(path, CODE_FIELDS):
            number = _int(path, line, "number", row["number"])
            if not 1 <= number <= len(labels):
                raise SourceError(
                    f"{_TITLE}: {path}:{line}: label number {number} is not in label.csv"
                )
            lab = labels[number - 1]
            if row["name"] != lab.name:
                raise SourceError(
                    f"{_TITLE}: {path}:{line}: label {number} is named {row['name']!r}, but "
                    f"{lab.name!r} in label.csv"
                )
            freq = dict(lab.categories).get(category)
            if freq is None:
                raise SourceError(
                    f"{_TITLE}: {path}:{line}: label {number} ({lab.name}) is not in category "
                    f"{category!r} according to label.csv"
                )
            if _int(path, line, "frequency", row["frequency"]) != freq:
                raise SourceError(
                    f"{_TITLE}: {path}:{line}: label {number} ({lab.name}) has frequency "
                    f"{row['frequency']}, but {category}({freq}) in label.csv"
                )
            if category in lab.category_coverage:
                raise SourceError(f"{_TITLE}: {path}:{line}: label {number} is listed twice")
            lab.category_coverage[category] = _float(path, line, "coverage", row["coverage"])
            numbers.append(number)
        return numbers

    @staticmethod
    def _read_index(path: Path, categories: list[str]) -> tuple[_Index, int, int]:
        header, rows = _csv_rows(path, INDEX_FIELDS)
        columns = header[len(INDEX_FIELDS) :]
        if sorted(columns) != sorted(categories):
            raise SourceError(
                f"{_TITLE}: {path} has header {','.join(header)!r}; expected "
                f"{','.join(INDEX_FIELDS + tuple(categories))!r} (the categories of "
                "category.csv)"
            )
        position = [columns.index(c) + len(INDEX_FIELDS) for c in categories]
        index = _Index([], [], [])
        seen: set[str] = set()
        sizes: list[str] | None = None
        first_line = 0
        for line, row in rows:
            image = row[0]
            parts = image.split("/")
            if len(parts) < 2 or not _safe_relpath(image):
                raise SourceError(
                    f"{_TITLE}: {path}:{line}: image {image!r} is not a relative path "
                    "'<datasource>/<file>' under images/"
                )
            if image in seen:
                raise SourceError(f"{_TITLE}: {path}:{line}: image {image} is listed twice")
            seen.add(image)
            if sizes is None:
                sizes, first_line = row[2:6], line
                for c, v in zip(INDEX_FIELDS[2:], sizes, strict=True):
                    _int(path, line, c, v)
            elif row[2:6] != sizes:
                raise SourceError(
                    f"{_TITLE}: {path}:{line}: ih,iw,sh,sw = {','.join(row[2:6])}, but "
                    f"{','.join(sizes)} on line {first_line}; a release has one image size"
                )
            index.images.append(image)
            index.splits.append(row[1])
            index.cells.append(tuple(row[p] for p in position))
        if sizes is None:
            raise SourceError(f"{_TITLE}: {path} lists no images")
        ih, iw, sh, sw = (int(v) for v in sizes)
        if ih != iw or sh != sw or sh != ih // 2:
            raise SourceError(
                f"{_TITLE}: {path}: images are {iw}×{ih} with {sw}×{sh} labels; a store holds "
                "square S×S images with S//2 × S//2 labels, as the broden1 releases do"
            )
        return index, ih, sh

    @staticmethod
    def _detect_kinds(path: Path, categories: list[str], index: _Index) -> dict[str, Kind]:
        """Per category: 'image' if its cells hold label numbers, 'pixel' if PNG names."""
        kinds: dict[str, Kind] = {}
        for j, cat in enumerate(categories):
            where: str | None = None
            for image, cells in zip(index.images, index.cells, strict=True):
                cell = cells[j]
                if not cell:
                    continue
                numeric = {_is_number(t) for t in cell.split(";") if t}
                kind: Kind = "image" if numeric == {True} else "pixel"
                if len(numeric) > 1:
                    problem = "mixes label numbers and PNG names"
                elif kinds.setdefault(cat, kind) != kind:
                    problem = f"holds {_WHAT[kind]}, but that of {where} holds {_WHAT[kinds[cat]]}"
                else:
                    problem = ""
                if problem:
                    raise SourceError(
                        f"{_TITLE}: {path}: the {cat} cell of {image} ({cell!r}) {problem}; a "
                        "category holds either label numbers or PNG file names"
                    )
                where = where or image
        # a category without any cell: its broden1 kind, else per-pixel
        return {c: kinds.get(c, BRODEN1_KINDS.get(c, "pixel")) for c in categories}

    @staticmethod
    def _version(root: Path) -> str | None:
        """The release name: README.txt's title ("broden1_224 joined segmentation data set"),
        else the folder's name when it starts with "broden"; None otherwise."""
        readme = root / "README.txt"
        if readme.is_file():
            try:
                first = readme.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
            except OSError:
                first = []
            if first and first[0].strip().endswith("joined segmentation data set"):
                return first[0].split()[0]
        if re.fullmatch(r"broden\w*", root.name):
            return root.name
        return None

    # -- adapter duties ----------------------------------------------------------------------

    def check(self) -> None:
        """Read and cross-check index.csv, label.csv, category.csv and every c_<cat>.csv."""
        release = self._release()
        from broden.adapters.manifest import load_manifest

        manifest = load_manifest("broden_legacy")
        known = {r.version: r for r in manifest.releases}
        if release.version in known:
            manifest.check_layout(self.options.root, known[release.version])
        elif not (self.options.root / "images").is_dir():
            raise SourceError(f"{_TITLE}: {self.options.root / 'images'} is missing")
        self.categories  # noqa: B018 - validates a configured category subset

    def release_version(self) -> str | None:
        return self._release().version

    def prebuilt(self) -> Prebuilt:
        """The release's sizes and concept table (numbers, names and categories kept)."""
        release = self._release()
        rank = {c: i for i, c in enumerate(release.categories)}
        codes = {
            (cat, n): k
            for cat, numbers in release.members.items()
            for k, n in enumerate(numbers, 1)
        }
        concepts: list[dict[str, Any]] = []
        for lab in release.labels:
            cov = lab.category_coverage
            primary = max((cov[c], rank[c]) for c, _ in lab.categories)
            concepts.append(
                {
                    "id": lab.number,
                    "name": lab.name,
                    "category": release.categories[primary[1]],
                    "categories": [
                        {
                            "name": c,
                            "frequency": f,
                            "coverage": cov[c],
                            "code": codes.get((c, lab.number)),
                        }
                        for c, f in lab.categories
                    ],
                    "frequency": lab.frequency,
                    "coverage": lab.coverage,
                    "synonyms": list(lab.synonyms),
                }
            )
        return Prebuilt(release.image_size, release.label_size, concepts, self.splits())

    def vocabulary(self) -> dict[str, dict[int, list[str]]]:
        release = self._release()
        return {
            cat: {n: [release.labels[n - 1].name] for n in release.members[cat]}
            for cat in self.categories
        }

    def splits(self) -> dict[str, str]:
        """source_id → the split the release assigned (index.csv's ``split`` column)."""
        index = self._release().index
        return dict(zip(index.images, index.splits, strict=True))

    def __len__(self) -> int:
        return len(self._release().index.images)

    def source_id(self, index: int) -> str:
        return self._release().index.images[index]

    def _members(self) -> dict[str, np.ndarray]:
        cached: dict[str, np.ndarray] | None = self.__dict__.get("_member_luts")
        if cached is None:
            release = self._release()
            cached = {}
            for cat, numbers in release.members.items():
                lut = np.zeros(len(release.labels) + 1, bool)
                lut[numbers] = True
                cached[cat] = lut
            self._member_luts = cached
        return cached

    def load(self, index: int) -> SourceSample:
        release = self._release()
        rel = release.index.images[index]
        images = self.options.root / "images"
        image = read_image(images / rel)
        S, L = release.image_size, release.label_size
        if image.shape[:2] != (S, S):
            raise SampleError(
                f"{images / rel}: image is {image.shape[1]}×{image.shape[0]}, but index.csv "
                f"says {S}×{S}"
            )
        luts = self._members()
        sample = SourceSample(source_id=rel, image=image)
        wanted = set(self.categories)
        for cat, cell in zip(release.categories, release.index.cells[index], strict=True):
            tokens = [t for t in cell.split(";") if t]
            if cat not in wanted or not tokens:
                continue
            lut = luts[cat]
            if release.kinds[cat] == "image":
                ids = [int(t) for t in tokens]
                unknown = [i for i in ids if i and (i >= len(lut) or not lut[i])]
                if unknown:
                    raise SampleError(
                        f"index.csv: {rel}: {cat} labels {unknown[:5]} are not in c_{cat}.csv"
                    )
                kept = list(dict.fromkeys(i for i in ids if i))  # "0": a dropped label
                if kept:
                    sample.image_labels[cat] = kept
                continue
            layers = []
            for t in tokens:
                if not _safe_relpath(t):
                    raise SampleError(f"index.csv: {rel}: {cat} file {t!r} is not a path")
                path = images / t
                rgb = read_png_rgb(path)
                if rgb.shape[:2] != (L, L):
                    raise SampleError(
                        f"{path}: label map is {rgb.shape[1]}×{rgb.shape[0]}, but index.csv "
                        f"says {L}×{L}"
                    )
                numbers = rgb[..., 0].astype(np.uint16) + (rgb[..., 1].astype(np.uint16) << 8)
                present = np.flatnonzero(np.bincount(numbers.ravel()))
                unknown = [int(n) for n in present if n and (n >= len(lut) or not lut[n])]
                if unknown:
                    raise SampleError(f"{path}: label numbers {unknown[:5]} are not in c_{cat}.csv")
                layers.append(numbers)
            sample.pixel[cat] = np.stack(layers)
        return sample
