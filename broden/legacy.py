"""Export a store to the layout of the released Broden (broden1_224/227/384).

:func:`export_legacy` writes any store, one built from sources or one imported from a
release with the ``broden_legacy`` adapter, as NetDissect's ``joinseg.py`` laid out the
releases, so that NetDissect, NetDissect-Lite and other loaders of that format read it::

    OUT/
      README.txt          generation parameters (the store's build config) and this format
      index.csv           image,split,ih,iw,sh,sw,<categories in category.csv order>
      label.csv           number,name,category,frequency,coverage,syns
      category.csv        name,first,last,count,frequency   (rows by first number)
      c_<category>.csv    code,number,name,frequency,coverage
      images/<datasource>/<file>.jpg, <stem>_<category>.png, <stem>_<category>_<k>.png

Rules (the releases' where they had one):

- **Image paths**: ``images/<source>/<basename of source_id>`` (Broden's rule), with the
  extension made ``.jpg``; a source imported from a release (adapter ``broden_legacy``)
  keeps its own path ``<datasource>/<file>`` (its source_id). When a name is taken
  (compared case-insensitively, so that the output is the same on every file system) a
  number is put before ``.jpg``: ``x.jpg``, ``x2.jpg``, ``x3.jpg``, as Broden's
  ``save_image`` did. Images are JPEG at ``jpeg_quality``.
- **Label PNGs**: RGB with R = n % 256, G = n // 256, B = 0 (n = concept id, the release's
  label number). A category's layers are written up to its last non-empty one; a category
  with no label in an image has an empty cell and no file. Names: ``<stem>_<cat>.png`` for
  a single-layer category, ``<stem>_<cat>_<k>.png`` (k = 1, 2, ...) for a layered one.
  *Layered* is decided per (datasource, category): layered if any image of that
  datasource has a label in a second layer of that category. broden1's ADE parts thus get
  ``_part_1.png``, ``_part_2.png`` (also in images with one part level) and its Pascal
  parts ``_part.png``, as in the release.
- **Whole-image categories**: the image's concept ids, dominant first, ';'-joined (never
  "0": the releases' "0" scene quirk is not reproduced).
- **index.csv**: one row per store image in store order; ``ih, iw = S``, ``sh, sw = L``.
- **label.csv**: one row per concept; ``category`` is ``cat(frequency)`` joined by ';' in
  the concept table's order, coverage printed with ``%f``.
- **category.csv**: the categories of the concept table, ordered by their smallest
  concept id (ties: hierarchy order); ``frequency`` sums the category's per-label counts.
- **c_<cat>.csv**: the category's concepts coded 1.. by descending frequency, then
  descending coverage, then ascending id; coverage printed like Python 2's ``str(float)``
  (12 significant digits), which is how the releases printed it.

Import of a release then export reproduces its CSV rows and label maps, with these known
differences: a "0" scalar label is dropped; a cell listing an all-zero PNG as its last
layer (a layer whose labels were all dropped by the rarity filter) loses that file; a
layered category of a datasource that never uses a second layer is written single-layer;
and c_<cat>.csv rows tied on frequency and coverage are ordered by id (the releases
ordered ties by Python 2 dict order, which the store does not record).
"""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from tqdm import tqdm

from broden.adapters.categories import category_sort_key
from broden.removal import store_containing
from broden.schema import Concept
from broden.store import BrodenStore, StoreError, array_name, open_store

#: The adapter of sources whose source_ids are already release paths.
LEGACY_ADAPTER = "broden_legacy"


class ExportError(StoreError):
    """An export that cannot be written where or how it was asked."""


@dataclass
class ExportSummary:
    """What :func:`export_legacy` wrote."""

    out_dir: Path
    images: int
    datasources: dict[str, int]  # images/<datasource> -> images
    categories: list[str]  # index.csv / category.csv order
    concepts: int
    label_files: int
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (source:source_id, path)
    seconds: float = 0.0

    def format(self) -> str:
        lines = [
            f"exported: {self.out_dir}",
            f"images: {self.images}  ("
            + ", ".join(f"{d} {n}" for d, n in self.datasources.items())
            + ")",
            f"label files: {self.label_files}",
            f"categories: {', '.join(self.categories)}",
            f"concepts: {self.concepts}",
        ]
        if self.renamed:
            lines.append(f"renamed on a name collision: {len(self.renamed)}")
            for src, path in self.renamed[:10]:
                lines.append(f"  - {src} -> images/{path}")
        lines.append(f"time: {self.seconds:.1f} s")
        return "\n".join(lines)


def py2_float_str(x: float) -> str:
    """``str(x)`` as Python 2 printed a float: 12 significant digits, ``.0`` on integers."""
    s = f"{x:.12g}"
    if s.lstrip("-").isdigit():
        s += ".0"
    return s


def category_order(concepts: Sequence[Concept]) -> list[str]:
    """The categories of a concept table by their smallest concept id (category.csv order)."""
    first: dict[str, int] = {}
    for c in concepts:
        for s in c.categories:
            first[s.name] = min(first.get(s.name, c.id), c.id)
    return sorted(first, key=lambda name: (first[name], category_sort_key(name)))


def _jpg_name(name: str) -> str:
    """A file name ending in ``.jpg`` (the images are re-encoded as JPEG)."""
    if name.endswith(".jpg"):
        return name
    stem = PurePosixPath(name).stem if "." in name else name
    return f"{stem or 'image'}.jpg"


class _Namer:
    """Broden's ``save_image`` naming: a taken name gets a number before ``.jpg``."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def claim(self, datasource: str, filename: str) -> str:
        stem = filename[: -len(".jpg")]
        name, trynum = filename, 1
        while f"{datasource}/{name}".lower() in self.taken:
            trynum += 1
            name = f"{stem}{trynum}.jpg"
        self.taken.add(f"{datasource}/{name}".lower())
        return name


def _image_place(source: str, source_id: str, legacy: bool) -> tuple[str, str]:
    """(datasource folder, file name under it) of an image, before collision numbering."""
    if legacy:
        parts = PurePosixPath(source_id).parts
        if len(parts) >= 2 and ".." not in parts and not PurePosixPath(source_id).is_absolute():
            return parts[0], _jpg_name(str(PurePosixPath(*parts[1:])))
    if source in (".", "..") or "/" in source or "\\" in source:
        raise ExportError(f"source name {source!r} cannot be used as a folder name")
    base = PurePosixPath(source_id.replace("\\", "/")).name
    return source, _jpg_name(base if base not in ("", ".", "..") else "image")


def _encode_png(labels: np.ndarray) -> bytes:
    """An L×L concept-id map as an RGB PNG with R = n % 256, G = n // 256, B = 0."""
    n = labels.astype(np.uint16)
    bgr = np.zeros((*n.shape, 3), np.uint8)
    bgr[..., 2] = n & 0xFF
    bgr[..., 1] = n >> 8
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ExportError("PNG encoding failed")
    return buf.tobytes()


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ExportError("JPEG encoding failed")
    return buf.tobytes()


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    # csv's default dialect (QUOTE_MINIMAL, "\r\n"), the one joinseg.py wrote with
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _check_out_dir(out_dir: Path) -> None:
    inside = store_containing(out_dir)
    if inside is not None:
        where = (
            "is a broden store" if inside == out_dir.resolve() else f"is inside the store {inside}"
        )
        raise ExportError(f"{out_dir} {where}; export into a folder of its own")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir} exists and is not a folder")
        if any(out_dir.iterdir()):
            raise ExportError(
                f"{out_dir} is not empty; export into a new or empty folder (an export never "
                "overwrites or mixes with existing files)"
            )


def export_legacy(
    store: BrodenStore | str | Path,
    out_dir: str | Path,
    *,
    jpeg_quality: int = 95,
    progress: bool = True,
) -> ExportSummary:
    """Write ``store`` in the broden1 layout under ``out_dir`` (a new or empty folder).

    >>> export_legacy("broden-sample.zarr", "broden-sample")   # doctest: +SKIP
    ExportSummary(out_dir=PosixPath('broden-sample'), images=26, ...)

    Raises :class:`ExportError` (a :class:`~broden.store.StoreError`) for an unusable
    ``out_dir`` or quality, and :class:`~broden.store.StoreError` for a store that is
    missing, foreign or incomplete. The rules are in this module's docstring.
    """
    t0 = time.perf_counter()
    if not 1 <= jpeg_quality <= 100:
        raise ExportError(f"jpeg_quality must be 1..100, got {jpeg_quality}")
    s = store if isinstance(store, BrodenStore) else open_store(store)
    out = Path(out_dir)
    _check_out_dir(out)

    concepts = s.concepts
    categories = category_order(concepts)
    kinds = {c.name: c.kind for c in s.categories}
    legacy_sources = {src.name for src in s.attrs.sources if src.adapter == LEGACY_ADAPTER}
    S, L = s.image_size, s.label_size
    n = len(s)

    # Pass 1 (metadata and the second layers only): image names, layered categories.
    namer = _Namer()
    paths: list[tuple[str, str]] = []  # (datasource, file name)
    renamed: list[tuple[str, str]] = []
    layered: set[tuple[str, str]] = set()
    deep = [c for c in s.categories if c.kind == "pixel" and c.layers > 1 and c.name in categories]
    for start, stop in s.shards():
        sources = [str(x) for x in np.asarray(s.array("meta/source")[start:stop])]
        sids = [str(x) for x in np.asarray(s.array("meta/source_id")[start:stop])]
        block_ds = []
        for source, sid in zip(sources, sids, strict=True):
            ds, fn = _image_place(source, sid, source in legacy_sources)
            name = namer.claim(ds, fn)
            if name != fn:
                renamed.append((f"{source}:{sid}", f"{ds}/{name}"))
            paths.append((ds, name))
            block_ds.append(ds)
        for c in deep:
            second = np.asarray(s.array(array_name(c))[start:stop, 1:])
            used = np.asarray(second.reshape(len(second), -1).any(axis=1))
            for ds, u in zip(block_ds, used.tolist(), strict=True):
                if u:
                    layered.add((ds, c.name))

    # Pass 2: images, label PNGs, index rows.
    out.mkdir(parents=True, exist_ok=True)
    images_dir = out / "images"
    index_rows: list[list[object]] = []
    per_ds: dict[str, int] = defaultdict(int)
    label_files = 0
    made: set[Path] = set()
    bar = tqdm(total=n, desc="export", unit="img", disable=not progress)
    for start, stop in s.shards():
        blk = s.read_block(start, stop)
        for r in range(stop - start):
            ds, fn = paths[start + r]
            rel = f"{ds}/{fn}"
            target = images_dir / rel
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            target.write_bytes(_encode_jpeg(blk.images[r], jpeg_quality))
            per_ds[ds] += 1
            stem = rel[: -len(".jpg")]
            cells: list[str] = []
            for cat in categories:
                kind = kinds.get(cat)
                if kind == "image":
                    ids = [int(i) for i in blk.image_labels[cat][r] if i]
                    cells.append(";".join(str(i) for i in ids))
                    continue
                if kind != "pixel":
                    cells.append("")
                    continue
                stack = blk.pixel[cat][r]
                filled = np.flatnonzero(stack.reshape(len(stack), -1).any(axis=1))
                if not filled.size:
                    cells.append("")
                    continue
                names = []
                for k in range(int(filled[-1]) + 1):
                    name = (
                        f"{stem}_{cat}_{k + 1}.png" if (ds, cat) in layered else f"{stem}_{cat}.png"
                    )
                    (images_dir / name).write_bytes(_encode_png(stack[k]))
                    names.append(name)
                    label_files += 1
                cells.append(";".join(names))
            index_rows.append([rel, blk.split[r], S, S, L, L, *cells])
            bar.update(1)
    bar.close()

    _write_label_files(out, concepts, categories)
    _write_csv(out / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", *categories],
               index_rows)  # fmt: skip
    _write_readme(out, s, dict(per_ds), jpeg_quality)
    return ExportSummary(
        out_dir=out,
        images=n,
        datasources=dict(per_ds),
        categories=categories,
        concepts=len(concepts),
        label_files=label_files,
        renamed=renamed,
        seconds=time.perf_counter() - t0,
    )


def _write_label_files(out: Path, concepts: Sequence[Concept], categories: list[str]) -> None:
    """label.csv, category.csv and every c_<category>.csv."""
    _write_csv(
        out / "label.csv",
        ["number", "name", "category", "frequency", "coverage", "syns"],
        (
            [
                c.id,
                c.name,
                ";".join(f"{s.name}({s.frequency})" for s in c.categories),
                c.frequency,
                f"{c.coverage:f}",
                ";".join(c.synonyms),
            ]
            for c in concepts
        ),
    )
    members: dict[str, list[tuple[Concept, int, float]]] = defaultdict(list)
    codes: dict[tuple[str, int], int | None] = {}
    for c in concepts:
        for s in c.categories:
            members[s.name].append((c, s.frequency, s.coverage))
            codes[(s.name, c.id)] = s.code
    _write_csv(
        out / "category.csv",
        ["name", "first", "last", "count", "frequency"],
        (
            [
                cat,
                min(c.id for c, _, _ in members[cat]),
                max(c.id for c, _, _ in members[cat]),
                len(members[cat]),
                sum(f for _, f, _ in members[cat]),
            ]
            for cat in categories
        ),
    )
    for cat in categories:
        if all(codes[(cat, c.id)] is not None for c, _, _ in members[cat]):
            # an imported release: its own codes, which fix the order of its ties
            coded = sorted(members[cat], key=lambda m: codes[(cat, m[0].id)] or 0)
        else:
            coded = sorted(members[cat], key=lambda m: (-m[1], -m[2], m[0].id))
        _write_csv(
            out / f"c_{cat}.csv",
            ["code", "number", "name", "frequency", "coverage"],
            (
                [code, c.id, c.name, freq, py2_float_str(cov)]
                for code, (c, freq, cov) in enumerate(coded, 1)
            ),
        )


def _write_readme(out: Path, s: BrodenStore, per_ds: dict[str, int], quality: int) -> None:
    a = s.attrs
    cfg = a.build_config
    title = f"{out.resolve().name} joined segmentation data set"
    sources = ", ".join(
        f"{src.name} ({src.adapter}{', ' + src.version if src.version else ''})"
        for src in a.sources
    )
    lines = [
        title,
        "=" * len(title),
        f"Exported by broden {a.package_version} from the store {s.path} "
        f"(fingerprint {s.fingerprint()}, built {a.created}).",
        "Joins the following data sets:",
        *(f"    {ds}: {k} images" for ds, k in per_ds.items()),
        f"store sources: {sources}",
        f"size: ({a.image_size}, {a.image_size})",
        f"segmentation_size: ({a.label_size}, {a.label_size})",
        "crop: False",
        f"splits: {cfg.get('splits')!r}",
        f"min_frequency: {cfg.get('min_frequency')!r}",
        f"min_coverage: {cfg.get('min_coverage')!r}",
        f"synonyms: {cfg.get('synonyms')!r}",
        f"colors: {cfg.get('colors')!r}",
        f"jpeg_quality: {quality}",
        "",
        f"generated at: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC",
        "",
        _FORMAT_TEXT,
    ]
    (out / "README.txt").write_text("\n".join(lines), encoding="utf-8")


_FORMAT_TEXT = """\
Files
-----
images/<datasource>/...
    The images (JPEG, S x S) and their label maps (PNG, S/2 x S/2). A label map holds one
    label number per pixel, encoded as red + 256 * green (blue unused); 0 is no label.

index.csv: image,split,ih,iw,sh,sw,<one column per category>
    One row per image: its path under images/, its split, the image's and the label
    maps' height and width, then per category an empty cell (no label), ';'-separated PNG
    file names under images/ (per-pixel labels; several files are layers of labels that
    overlap, dominant first), or ';'-separated label numbers (whole-image labels,
    dominant first).

label.csv: number,name,category,frequency,coverage,syns
    One row per label number: its name, the categories it appears in with the number of
    images in each ('cat(n)' joined by ';'), its total image count, its summed image
    coverage (fraction of each image's pixels, summed over images) and its synonyms.

category.csv: name,first,last,count,frequency
    Per category (ordered by first): smallest and largest label number, the number of
    labels, and the sum of their image counts.

c_<category>.csv: code,number,name,frequency,coverage
    A dense code 1..K for the labels of one category, by descending frequency, with the
    label's global number, name, image count and coverage within the category.
"""
