"""The Broden store, format version 1: one Zarr v3 group, readable with zarr alone.

Layout (N images, image size S, label size L = S // 2, shard = images per shard)::

    images               uint8  (N, S, S, 3)  RGB; chunk 1 image, shard ``shard`` images, zstd
    pixel/<category>     uint16 (N, K, L, L)  global concept ids, 0 = none; K layers
    image/<category>     uint16 (N, K)        whole-image concept ids, 0 = padding
    meta/source          str    (N,)          source name
    meta/source_id       str    (N,)          the image's id / path inside its source
    meta/split           str    (N,)          train / val (md5 rule of Broden)
    meta/orig_size       int32  (N, 2)        original height, width
    attrs["broden"]      format, sizes, categories (hierarchy order, kind, K), sources
                         with provenance, build config, package version, completion
                         flag, build report
    attrs["concepts"]    the concept table (id, name, category, categories, frequency,
                         coverage, synonyms, sources, part_of)

Every array shares the shard boundaries (images ``[j·shard, (j+1)·shard)``) and each
build task writes whole shards: Zarr rewrites a shard whole, so two writers sharing
one lose data. Every array's attributes hold ``shard_digests``, a blake2b digest of
each shard's decoded content, taken when it was written; :func:`validate_store`
recomputes them (all-zero chunks are never written by zarr and read back as zeros,
so a missing file alone is not damage; a digest mismatch is).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from pydantic import ValidationError
from zarr.codecs import ZstdCodec

from broden.adapters.categories import category_sort_key
from broden.errors import StoreError
from broden.schema import FORMAT_VERSION, CategorySpec, Concept, StoreAttrs
from broden.shards import ShardedRowReader

STORE_ATTR = "broden"
CONCEPTS_ATTR = "concepts"
DIGESTS_ATTR = "shard_digests"

#: Measured in bench/codecs.py on the real fixture photos at 224: zstd level 1
#: compresses as well as level 3 (1.34× vs 1.38×) and encodes 3.5× faster.
IMAGE_CODEC = ZstdCodec(level=1)
#: Label maps compress 25-45× with zstd level 3 (DESIGN.md §4).
LABEL_CODEC = ZstdCodec(level=3)

META_ARRAYS = ("meta/source", "meta/source_id", "meta/split", "meta/orig_size")


@dataclass
class Block:
    """Rows ``[start, start + n)`` of every array of a store."""

    images: np.ndarray  # (n, S, S, 3) uint8
    pixel: dict[str, np.ndarray] = field(default_factory=dict)  # (n, K, L, L) uint16
    image_labels: dict[str, np.ndarray] = field(default_factory=dict)  # (n, K) uint16
    source: list[str] = field(default_factory=list)
    source_id: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    orig_size: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class StoreSample:
    """Image ``index`` of a store with all its labels (global concept ids)."""

    index: int
    image: np.ndarray  # (S, S, 3) uint8
    pixel: dict[str, np.ndarray]  # category -> (K, L, L) uint16
    image_labels: dict[str, np.ndarray]  # category -> (K,) uint16, 0 = padding
    source: str
    source_id: str
    split: str


def shard_digest(data: np.ndarray) -> str:
    """Digest of a shard's decoded content (shape, dtype and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    if data.dtype.kind in "OUT":
        h.update(json.dumps([str(x) for x in data.ravel()]).encode())
    else:
        h.update(f"{data.shape}{data.dtype.str}".encode())
        h.update(np.ascontiguousarray(data).tobytes())
    return h.hexdigest()


# -- writing -------------------------------------------------------------------------------


def create_arrays(
    group: zarr.Group,
    n: int,
    image_size: int,
    label_size: int,
    shard: int,
    categories: list[CategorySpec],
) -> None:
    """Create every array of an empty store (existing arrays of the same shape are kept,
    so a resumed build does not lose shards already written)."""
    S, L = image_size, label_size

    def make(
        name: str, shape: tuple[int, ...], chunks: tuple[int, ...], shards: Any, **kw: Any
    ) -> None:
        if name in group:
            existing = group[name]
            if isinstance(existing, zarr.Array) and existing.shape == shape:
                return
            del group[name]
        group.create_array(name, shape=shape, chunks=chunks, shards=shards, **kw)

    make(
        "images", (n, S, S, 3), (1, S, S, 3), (shard, S, S, 3),
        dtype="uint8", compressors=IMAGE_CODEC,
    )  # fmt: skip
    for c in categories:
        K = c.layers
        if c.kind == "pixel":
            make(
                f"pixel/{c.name}", (n, K, L, L), (1, K, L, L), (shard, K, L, L),
                dtype="uint16", compressors=LABEL_CODEC,
            )  # fmt: skip
        else:
            make(
                f"image/{c.name}", (n, K), (shard, K), None,
                dtype="uint16", compressors=LABEL_CODEC,
            )  # fmt: skip
    for name in ("meta/source", "meta/source_id", "meta/split"):
        make(name, (n,), (shard,), None, dtype=str, compressors=LABEL_CODEC)
    make("meta/orig_size", (n, 2), (shard, 2), None, dtype="int32", compressors=LABEL_CODEC)


def write_block(group: zarr.Group, start: int, block: Block) -> dict[str, str]:
    """Write rows ``[start, start + len(block))`` of every array; return their digests.

    ``start`` must be a shard boundary and the block a whole shard (or the last one).
    """
    stop = start + len(block)
    parts: dict[str, np.ndarray] = {"images": block.images}
    parts.update({f"pixel/{c}": a for c, a in block.pixel.items()})
    parts.update({f"image/{c}": a for c, a in block.image_labels.items()})
    parts["meta/source"] = np.array(block.source, dtype=str)
    parts["meta/source_id"] = np.array(block.source_id, dtype=str)
    parts["meta/split"] = np.array(block.split, dtype=str)
    parts["meta/orig_size"] = np.asarray(block.orig_size, np.int32)
    digests = {}
    for name, data in parts.items():
        arr = group[name]
        assert isinstance(arr, zarr.Array)
        if data.shape[1:] != arr.shape[1:] or len(data) != len(block):
            raise ValueError(f"{name}: block of shape {data.shape} does not fit {arr.shape}")
        arr[start:stop] = data
        digests[name] = shard_digest(data)
    return digests


# -- reading -------------------------------------------------------------------------------


def _open_group(path: Path) -> zarr.Group:
    if not Path(path).exists():
        raise StoreError(f"{path}: no such store")
    try:
        return zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError, zarr.errors.GroupNotFoundError) as e:
        raise StoreError(f"{path}: not a Zarr group ({type(e).__name__})") from None


def read_attrs(group: zarr.Group, path: Path | str) -> StoreAttrs:
    raw = group.attrs.get(STORE_ATTR)
    if raw is None:
        raise StoreError(f"{path}: not a Broden store (no '{STORE_ATTR}' attribute)")
    if isinstance(raw, dict) and raw.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"{path}: store format version {raw.get('format_version')}; this broden reads "
            f"version {FORMAT_VERSION}"
        )
    try:
        return StoreAttrs.model_validate(raw)
    except ValidationError as e:
        raise StoreError(
            f"{path}: damaged store metadata: {e.errors()[0]['msg']} "
            f"at {'.'.join(map(str, e.errors()[0]['loc']))}"
        ) from None


class BrodenStore:
    """Read access to a complete store. Safe to pickle (re-opens lazily in each process).

    >>> store = BrodenStore("broden-sample.zarr")          # doctest: +SKIP
    >>> s = store.sample(0); s.pixel["object"].shape        # doctest: +SKIP
    (1, 112, 112)
    """

    def __init__(self, path: str | Path, require_complete: bool = True):
        self.path = Path(path)
        group = _open_group(self.path)
        self.attrs = read_attrs(group, self.path)
        if require_complete and not self.attrs.complete:
            raise StoreError(
                f"{self.path}: the store is incomplete (its build was interrupted or is still "
                "running); run the same `broden build` command again to resume it"
            )
        try:
            table: list[Any] = list(group.attrs.get(CONCEPTS_ATTR) or [])  # type: ignore[arg-type]
            self.concepts = [Concept.model_validate(c) for c in table]
        except ValidationError as e:
            raise StoreError(
                f"{self.path}: damaged concept table: {e.errors()[0]['msg']}"
            ) from None
        self._group: zarr.Group | None = group

    # pickling: drop the open group, reopen on first use in the new process
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_group"] = None
        for cache in ("_arrays", "_rows", "_small"):
            state.pop(cache, None)
        return state

    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = zarr.open_group(str(self.path), mode="r")
        return self._group

    def array(self, name: str) -> zarr.Array:
        cache: dict[str, zarr.Array] = self.__dict__.setdefault("_arrays", {})
        if name not in cache:
            try:
                arr = self.group[name]
            except KeyError:
                raise StoreError(f"{self.path}: array {name!r} is missing") from None
            assert isinstance(arr, zarr.Array)
            cache[name] = arr
        return cache[name]

    # -- description ----------------------------------------------------------------------

    def __len__(self) -> int:
        return self.attrs.images

    @property
    def image_size(self) -> int:
        return self.attrs.image_size

    @property
    def label_size(self) -> int:
        return self.attrs.label_size

    @property
    def shard_size(self) -> int:
        return self.attrs.shard_size

    @property
    def categories(self) -> list[CategorySpec]:
        return self.attrs.categories

    def category(self, name: str) -> CategorySpec:
        for c in self.attrs.categories:
            if c.name == name:
                return c
        raise KeyError(name)

    def concept(self, cid: int) -> Concept:
        return self.concepts[cid - 1]

    def fingerprint(self) -> str:
        """Content key: changes whenever the images, labels or concepts could differ."""
        doc = {
            "attrs": self.attrs.model_dump(
                mode="json", exclude={"created", "build_report", "complete"}
            ),
            "concepts": [c.model_dump(mode="json") for c in self.concepts],
            "digests": {
                name: self.array(name).attrs.get(DIGESTS_ATTR) for name in self.array_names()
            },
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def _row_reader(self, name: str) -> ShardedRowReader | None:
        """The spec-level fast reader of a sharded array (None: read through zarr)."""
        cache: dict[str, ShardedRowReader | None] = self.__dict__.setdefault("_rows", {})
        if name not in cache:
            cache[name] = ShardedRowReader.for_array(self.path / name)
        return cache[name]

    def _row(self, name: str, index: int) -> np.ndarray:
        reader = self._row_reader(name)
        if reader is not None:
            return reader.read(index)
        return np.asarray(self.array(name)[index])

    def _whole(self, name: str) -> np.ndarray:
        """A small array (whole-image labels, metadata) read once and kept in memory."""
        cache: dict[str, np.ndarray] = self.__dict__.setdefault("_small", {})
        if name not in cache:
            cache[name] = np.asarray(self.array(name)[:])
        return cache[name]

    def array_names(self) -> list[str]:
        names = ["images"]
        for c in self.categories:
            names.append(f"{'pixel' if c.kind == 'pixel' else 'image'}/{c.name}")
        return names + list(META_ARRAYS)

    # -- data -----------------------------------------------------------------------------

    def image(self, index: int) -> np.ndarray:
        """Image ``index``: (S, S, 3) uint8 RGB."""
        self._check_index(index)
        return self._row("images", index)

    def labels(self, index: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(pixel labels: category → (K, L, L), image labels: category → (K,)) of one image."""
        self._check_index(index)
        pixel, image = {}, {}
        for c in self.categories:
            if c.kind == "pixel":
                pixel[c.name] = self._row(f"pixel/{c.name}", index)
            else:
                image[c.name] = self._whole(f"image/{c.name}")[index]
        return pixel, image

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} out of range 0..{len(self) - 1}")

    def meta(self, name: str) -> np.ndarray:
        """A whole metadata array (``source``, ``source_id``, ``split``, ``orig_size``)."""
        return self._whole(f"meta/{name}")

    def sample(self, index: int) -> StoreSample:
        """Image ``index`` with all its label layers and metadata."""
        pixel, image = self.labels(index)
        return StoreSample(
            index=index,
            image=self.image(index),
            pixel=pixel,
            image_labels=image,
            source=str(self.meta("source")[index]),
            source_id=str(self.meta("source_id")[index]),
            split=str(self.meta("split")[index]),
        )

    def read_block(self, start: int, stop: int, images: bool = True) -> Block:
        """Rows ``[start, stop)`` of every array (``images=False``: labels and metadata only)."""
        stop = min(stop, len(self))

        def rows(name: str) -> np.ndarray:
            if self._row_reader(name) is None:
                return np.asarray(self.array(name)[start:stop])
            return np.stack([self._row(name, i) for i in range(start, stop)])

        blk = Block(
            images=rows("images") if images else np.zeros((stop - start, 0, 0, 3), np.uint8)
        )
        for c in self.categories:
            if c.kind == "pixel":
                blk.pixel[c.name] = rows(f"pixel/{c.name}")
            else:
                blk.image_labels[c.name] = self._whole(f"image/{c.name}")[start:stop]
        blk.source = [str(s) for s in self.meta("source")[start:stop]]
        blk.source_id = [str(s) for s in self.meta("source_id")[start:stop]]
        blk.split = [str(s) for s in self.meta("split")[start:stop]]
        blk.orig_size = self.meta("orig_size")[start:stop]
        return blk

    def shards(self) -> Iterator[tuple[int, int]]:
        """(start, stop) of every shard."""
        for start in range(0, len(self), self.shard_size):
            yield start, min(start + self.shard_size, len(self))


def open_store(path: str | Path, require_complete: bool = True) -> BrodenStore:
    """Open a store for reading; :class:`StoreError` if it is missing, foreign or incomplete."""
    return BrodenStore(path, require_complete=require_complete)


# -- validation ----------------------------------------------------------------------------


def validate_store(path: str | Path, check_data: bool = True) -> list[str]:
    """Every problem found in a store (empty list: valid).

    Checks the metadata schema, the completion flag, every array's presence, shape and
    dtype, the concept table, and (``check_data``) every shard's content against the
    digest recorded at build time, every label id against the concept table, and the
    metadata values.
    """
    path = Path(path)
    try:
        store = BrodenStore(path, require_complete=False)
    except StoreError as e:
        return [str(e)]
    problems: list[str] = []
    a = store.attrs
    if not a.complete:
        problems.append("store is incomplete: its build did not finish (run it again to resume)")
    if a.label_size != a.image_size // 2:
        problems.append(f"label_size {a.label_size} is not image_size // 2 = {a.image_size // 2}")
    order = sorted(a.categories, key=lambda c: category_sort_key(c.name))
    if [c.name for c in a.categories] != [c.name for c in order]:
        problems.append("categories are not in hierarchy order")

    C = len(store.concepts)
    ids = [c.id for c in store.concepts]
    if ids != list(range(1, C + 1)):
        problems.append("concept ids are not 1..C in order")
    names = [c.name for c in store.concepts]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"concept names appear twice: {dup[:5]}")
    cat_names = {c.name for c in a.categories}
    for c in store.concepts:
        if c.category not in cat_names:
            problems.append(f"concept {c.id} ({c.name}) has unknown category {c.category!r}")
        for edge in c.part_of:
            if not 1 <= edge.id <= C:
                problems.append(f"concept {c.id} ({c.name}) is part_of unknown concept {edge.id}")

    N, S, L = a.images, a.image_size, a.label_size
    expected: dict[str, tuple[tuple[int, ...], str]] = {"images": ((N, S, S, 3), "uint8")}
    for cat in a.categories:
        if cat.kind == "pixel":
            expected[f"pixel/{cat.name}"] = ((N, cat.layers, L, L), "uint16")
        else:
            expected[f"image/{cat.name}"] = ((N, cat.layers), "uint16")
    expected["meta/orig_size"] = ((N, 2), "int32")
    present: dict[str, zarr.Array] = {}
    for name, (shape, dtype) in expected.items():
        try:
            arr = store.array(name)
        except StoreError as e:
            problems.append(str(e).split(": ", 1)[-1])
            continue
        if arr.shape != shape or str(arr.dtype) != dtype:
            problems.append(f"{name}: expected {dtype} {shape}, found {arr.dtype} {arr.shape}")
            continue
        present[name] = arr
    for name in ("meta/source", "meta/source_id", "meta/split"):
        try:
            arr = store.array(name)
        except StoreError as e:
            problems.append(str(e).split(": ", 1)[-1])
            continue
        if arr.shape != (N,):
            problems.append(f"{name}: expected shape {(N,)}, found {arr.shape}")
            continue
        present[name] = arr
    if not check_data or not a.complete:
        return problems

    splits = set(a.build_config.get("splits", {"train": 0.7, "val": 0.3}))
    sources = {s.name for s in a.sources}
    shard = a.shard_size
    for name, arr in present.items():
        digests = arr.attrs.get(DIGESTS_ATTR)
        n_shards = -(-N // shard)
        if not isinstance(digests, list) or len(digests) != n_shards:
            problems.append(f"{name}: shard digests missing from its attributes")
            digests = None
        for j, start in enumerate(range(0, N, shard)):
            stop = min(start + shard, N)
            where = f"{name} shard {j} (images {start}-{stop - 1})"
            try:
                data = np.asarray(arr[start:stop])
            except Exception as e:  # a damaged shard file raises from the codec
                problems.append(f"{where}: unreadable ({type(e).__name__}: {e})")
                continue
            if digests is not None and shard_digest(data) != digests[j]:
                problems.append(
                    f"{where}: content differs from the digest recorded at build time "
                    "(missing or damaged shard file)"
                )
            if name.startswith(("pixel/", "image/")):
                bad = np.unique(data[data > C])
                if bad.size:
                    problems.append(
                        f"{where}: label ids {bad[:5].tolist()} are not in the concept table "
                        f"(1..{C})"
                    )
            elif name == "meta/source":
                unknown = {str(s) for s in data} - sources
                if unknown:
                    problems.append(f"{where}: unknown source names {sorted(unknown)[:5]}")
            elif name == "meta/split":
                unknown = {str(s) for s in data} - splits
                if unknown:
                    problems.append(f"{where}: unknown split names {sorted(unknown)[:5]}")
            elif name == "meta/source_id":
                if any(not str(s) for s in data):
                    problems.append(f"{where}: empty source ids")
            elif name == "meta/orig_size" and (data <= 0).any():
                problems.append(f"{where}: non-positive original sizes")
    if "meta/source_id" in present and "meta/source" in present:
        pairs = list(
            zip(
                (str(s) for s in np.asarray(present["meta/source"][:])),
                (str(s) for s in np.asarray(present["meta/source_id"][:])),
                strict=True,
            )
        )
        if len(set(pairs)) != len(pairs):
            problems.append("meta/source_id: an image id appears twice within one source")
    return problems
