"""Reading a store: :func:`open_store` and :class:`BrodenStore` (one image with its labels,
blocks of rows, metadata, the fingerprint), and the typed attributes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from pydantic import ValidationError

from broden.errors import StoreError
from broden.schema import FORMAT_VERSION, CategorySpec, Concept, StoreAttrs, parse_concepts
from broden.store.layout import (
    CONCEPTS_ATTR,
    DIGESTS_ATTR,
    STORE_ATTR,
    Block,
    array_names,
    shard_rows,
)
from broden.store.metadata import read_json
from broden.store.shards import ShardedRowReader

#: rows ``[start, stop)`` of a named array: what :meth:`BrodenStore.read_block` reads with
RowSource = Callable[[str, int, int], np.ndarray]
#: arrays small enough to be read whole once and kept in memory
WHOLE_ARRAYS = ("image/", "meta/")


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


def open_group(path: str | Path) -> zarr.Group:
    """The store's root group, read-only, from its live metadata (never the consolidated
    copy, which a writer other than broden may have left stale); :class:`StoreError` if it
    is not a Zarr group."""
    if not Path(path).exists():
        raise StoreError(f"{path}: no such store")
    try:
        read_json(Path(path) / "zarr.json")  # damaged (truncated, not JSON): names the file
        return zarr.open_group(str(path), mode="r", use_consolidated=False)
    except (
        FileNotFoundError,
        NotADirectoryError,
        ValueError,
        KeyError,
        TypeError,
        zarr.errors.GroupNotFoundError,
    ) as e:
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

    A shard that does not decode is a :class:`StoreError` naming the array and the shard.
    Reads are not checked against the recorded digests here: :mod:`broden.store.verified`
    does that; ``checked_shards`` holds the (array, shard) pairs found to match (it travels
    with the store to other processes).

    >>> store = BrodenStore("broden-sample.zarr")          # doctest: +SKIP
    >>> s = store.sample(0); s.pixel["object"].shape        # doctest: +SKIP
    (1, 112, 112)
    """

    def __init__(self, path: str | Path, require_complete: bool = True):
        self.path = Path(path)
        group = open_group(self.path)
        self.attrs = read_attrs(group, self.path)
        if require_complete and not self.attrs.complete:
            raise StoreError(
                f"{self.path}: the store is incomplete (its build was interrupted or is still "
                "running); run the same `broden build` command again to resume it"
            )
        self.concepts = parse_concepts(group.attrs.get(CONCEPTS_ATTR), self.path)
        self._group: zarr.Group | None = group
        self.checked_shards: set[tuple[str, int]] = set()

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
            self._group = open_group(self.path)
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
        if reader is None:
            return self.rows(name, index, index + 1)[0]
        try:
            return reader.read(index)
        except Exception as e:  # the codec's error on a damaged or truncated shard file
            raise self._undecodable(name, index, e) from None

    def _whole(self, name: str) -> np.ndarray:
        """A small array (whole-image labels, metadata) read once and kept in memory."""
        cache: dict[str, np.ndarray] = self.__dict__.setdefault("_small", {})
        if name not in cache:
            arr = self.array(name)
            try:
                cache[name] = np.asarray(arr[:])
            except Exception:  # find the shard that does not decode
                cache[name] = np.concatenate([self._decoded(name, a, b) for a, b in self.shards()])
        return cache[name]

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of array ``name`` (``image/`` and ``meta/`` arrays from
        their copy in memory); a shard that does not decode is a :class:`StoreError`
        naming the array and the shard."""
        if name.startswith(WHOLE_ARRAYS):
            return self._whole(name)[start:stop]
        stop, shard = min(stop, len(self)), self.shard_size
        if stop <= start:
            return np.asarray(self.array(name)[start:stop])
        parts = [
            self._decoded(name, max(j * shard, start), min((j + 1) * shard, stop))
            for j in range(start // shard, -(-stop // shard))
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _decoded(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of one shard of array ``name``."""
        try:
            reader = self._row_reader(name)
            if reader is None:
                return np.asarray(self.array(name)[start:stop])
            return np.stack([reader.read(i) for i in range(start, stop)])
        except StoreError:
            raise
        except Exception as e:  # the codec's error on a damaged or truncated shard file
            raise self._undecodable(name, start, e) from None

    def _undecodable(self, name: str, row: int, error: Exception) -> StoreError:
        """The error for a shard of ``name`` (the one holding ``row``) that does not decode."""
        j = row // self.shard_size
        a, b = shard_rows(j, len(self), self.shard_size)
        what = " ".join(f"{type(error).__name__}: {error}".split())
        return StoreError(
            f"{self.path}: cannot read images {a}-{b - 1} of {name} (shard {j}): the shard "
            f"does not decode ({what}); `broden validate {self.path}` lists what is damaged"
        )

    def array_names(self) -> list[str]:
        return array_names(self.categories)

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

    def read_block(
        self, start: int, stop: int, images: bool = True, rows: RowSource | None = None
    ) -> Block:
        """Rows ``[start, stop)`` of every array (``images=False``: labels and metadata
        only), each read by ``rows`` (default :meth:`rows`; a
        :class:`~broden.store.verified.ShardVerifier` passes its checked reads)."""
        stop = min(stop, len(self))
        read = rows or self.rows

        def part(name: str) -> np.ndarray:
            return read(name, start, stop)

        blk = Block(
            images=part("images") if images else np.zeros((stop - start, 0, 0, 3), np.uint8)
        )
        for c in self.categories:
            if c.kind == "pixel":
                blk.pixel[c.name] = part(f"pixel/{c.name}")
            else:
                blk.image_labels[c.name] = part(f"image/{c.name}")
        blk.source = [str(s) for s in part("meta/source")]
        blk.source_id = [str(s) for s in part("meta/source_id")]
        blk.split = [str(s) for s in part("meta/split")]
        blk.orig_size = part("meta/orig_size")
        return blk

    def shards(self) -> Iterator[tuple[int, int]]:
        """(start, stop) of every shard."""
        for start in range(0, len(self), self.shard_size):
            yield start, min(start + self.shard_size, len(self))


def open_store(path: str | Path, require_complete: bool = True) -> BrodenStore:
    """Open a store for reading; :class:`StoreError` if it is missing, foreign or incomplete."""
    return BrodenStore(path, require_complete=require_complete)
