"""Writing a store: the one place that knows the write protocol.

1. :meth:`StoreWriter.begin`: the consolidated metadata of an earlier complete store
   goes first (a copy that would go stale, :mod:`~broden.store.metadata`), then the
   attributes, marked incomplete, and the concept table go in, then every array of the
   layout is created with its dimension names (arrays already there with the right shape
   are kept, so a resumed run keeps its written shards). An add starts with
   :meth:`~StoreWriter.mark_incomplete` instead, which drops the copy first too, as do
   :meth:`~StoreWriter.ensure_arrays` and :meth:`~StoreWriter.detach`.
2. :meth:`StoreWriter.write_shard`: whole shards only, from any process (writers sharing
   a Zarr shard lose data); it returns each array's digest of the shard, which the caller
   keeps until the end (a build's staging folder, for instance).
3. :meth:`StoreWriter.finish`: every array's digests, then the attributes marked
   complete, then the consolidated metadata, last. A store whose attributes say complete
   is therefore whole, and consolidated metadata, where there is some, describes a
   complete store (killed just before that step, a complete store has none: broden reads
   it all the same, and ``broden upgrade`` writes it).

:func:`write_store` does all three for data in memory (synthetic stores, benchmarks,
tests). :meth:`StoreWriter.shard_holds` and :func:`digest_mismatches` read shards back
against their digests: a resumed or rerun build trusts nothing else as written. One process
at a time writes a store (its lock, :mod:`broden.store.lock`, taken by the commands).

>>> w = StoreWriter.begin("s.zarr", attrs, concepts)               # doctest: +SKIP
>>> digests = [w.write_shard(j, block) for j, block in enumerate(blocks)]  # doctest: +SKIP
>>> w.finish(attrs, merge_digests(digests))                        # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from broden.errors import StoreError
from broden.schema import CategorySpec, Concept, StoreAttrs
from broden.store.layout import (
    CONCEPTS_ATTR,
    DIGESTS_ATTR,
    IMAGE_CODEC,
    IMAGES,
    LABEL_CODEC,
    STORE_ATTR,
    Block,
    array_name,
    array_names,
    digest_matches,
    dimension_names,
    n_shards,
    shard_digest,
    shard_rows,
)
from broden.store.metadata import consolidate, drop_consolidated, set_dimension_names


class StoreWriter:
    """Writes the store at ``path`` (which :meth:`begin` made, in this process or another)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._group: zarr.Group | None = None
        self._attrs: StoreAttrs | None = None

    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
        return self._group

    @property
    def attrs(self) -> StoreAttrs:
        """The store's attributes as they are now (read once)."""
        if self._attrs is None:
            self._attrs = StoreAttrs.model_validate(self.group.attrs[STORE_ATTR])
        return self._attrs

    def array(self, name: str) -> zarr.Array:
        arr = self.group[name]
        if not isinstance(arr, zarr.Array):
            raise StoreError(f"{self.path}: {name} is not an array")
        return arr

    # -- 1. begin ---------------------------------------------------------------------------

    @classmethod
    def begin(
        cls, path: str | os.PathLike[str], attrs: StoreAttrs, concepts: Sequence[Concept]
    ) -> StoreWriter:
        """Start (or restart) writing a store with ``attrs`` (which must say incomplete)
        and ``concepts``; create its arrays."""
        if attrs.complete:
            raise ValueError("a store begins incomplete: pass attrs with complete=False")
        drop_consolidated(path)  # before anything changes
        group = zarr.open_group(str(path), mode="a", use_consolidated=False)
        group.attrs[STORE_ATTR] = attrs.model_dump(mode="json")
        group.attrs[CONCEPTS_ATTR] = [c.model_dump(mode="json") for c in concepts]
        writer = cls(path)
        writer._group, writer._attrs = group, attrs
        writer.ensure_arrays(attrs.images, attrs.categories)
        return writer

    def ensure_arrays(self, images: int, categories: Sequence[CategorySpec]) -> None:
        """Every array of a store of ``images`` rows with ``categories``, in the store's
        image, label and shard sizes. An array that is there with the right shape is
        kept, one with the right row shape is resized to ``images`` rows (its rows kept),
        any other is replaced. Every array gets the dimension names of
        :func:`~broden.store.layout.dimension_names` (a kept one of an earlier broden too:
        metadata only)."""
        drop_consolidated(self.path)
        a = self.attrs
        S, L, shard = a.image_size, a.label_size, a.shard_size
        group = self.group

        def make(name: str, row: tuple[int, ...], inner: int, sharded: bool, **kw: Any) -> None:
            shape = (images, *row)
            if name in group:
                existing = group[name]
                if isinstance(existing, zarr.Array) and existing.shape[1:] == row:
                    if existing.shape[0] != images:
                        existing.resize(shape)
                    # after zarr's last write of its metadata: ``existing`` does not see them
                    set_dimension_names(self.path / name, dimension_names(name))
                    return
                del group[name]
            chunks = (inner, *row)
            shards = (shard, *row) if sharded else None
            group.create_array(
                name, shape=shape, chunks=chunks, shards=shards,
                dimension_names=dimension_names(name), **kw,
            )  # fmt: skip

        make(IMAGES, (S, S, 3), 1, True, dtype="uint8", compressors=IMAGE_CODEC)
        for c in categories:
            if c.kind == "pixel":
                make(array_name(c), (c.layers, L, L), 1, True, dtype="uint16",
                     compressors=LABEL_CODEC)  # fmt: skip
            else:
                make(array_name(c), (c.layers,), shard, False, dtype="uint16",
                     compressors=LABEL_CODEC)  # fmt: skip
        for name in ("meta/source", "meta/source_id", "meta/split"):
            make(name, (), shard, False, dtype=str, compressors=LABEL_CODEC)
        make("meta/orig_size", (2,), shard, False, dtype="int32", compressors=LABEL_CODEC)

    def mark_incomplete(self, **update: Any) -> None:
        """Record the store as incomplete (with ``update`` applied to its attributes, e.g. the
        fingerprint of the add in progress) before its arrays change; its consolidated
        metadata goes first."""
        drop_consolidated(self.path)
        attrs = self.attrs.model_copy(update={**update, "complete": False})
        self.group.attrs[STORE_ATTR] = attrs.model_dump(mode="json")
        self._attrs = attrs

    def detach(self, name: str, dest: Path) -> None:
        """Move array ``name`` out of the store to ``dest`` (kept there, e.g. to be copied
        back with more layers); a no-op if it was moved already."""
        drop_consolidated(self.path)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path / name, dest)
        self._group = None  # the listing changed

    # -- 2. shards --------------------------------------------------------------------------

    def write_shard(self, index: int, block: Block) -> dict[str, str]:
        """Write shard ``index`` of every array from ``block`` (all its rows); return each
        array's digest of it."""
        return self.write_arrays(index, block.arrays())

    def write_arrays(self, index: int, arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
        """Write shard ``index`` of the named arrays only (whole shards); their digests.
        Data only: it follows :meth:`begin` or :meth:`mark_incomplete`, which dropped the
        consolidated metadata (chunks are not part of it)."""
        digests = {}
        for name, data in arrays.items():
            arr = self.array(name)
            start, stop = shard_rows(index, arr.shape[0], self.attrs.shard_size)
            if len(data) != stop - start or data.shape[1:] != arr.shape[1:]:
                raise ValueError(
                    f"{name}: shard {index} is rows {start}-{stop - 1} of shape "
                    f"{(stop - start, *arr.shape[1:])}, got {data.shape}"
                )
            arr[start:stop] = data
            digests[name] = shard_digest(data)
        return digests

    def shard_holds(self, index: int, digests: Mapping[str, str]) -> bool:
        """Whether shard ``index`` of each named array reads back with its digest (a resumed
        run checks the shards it recorded as written before it trusts them); an array or
        shard that cannot be read does not hold."""
        try:
            for name, want in digests.items():
                arr = self.array(name)
                start, stop = shard_rows(index, arr.shape[0], self.attrs.shard_size)
                if not digest_matches(np.asarray(arr[start:stop]), want):
                    return False
        except Exception:  # noqa: BLE001 - a damaged shard file raises from its codec
            return False
        return True

    # -- 3. finish --------------------------------------------------------------------------

    def finish(
        self,
        attrs: StoreAttrs,
        digests: Mapping[str, Sequence[str]],
        concepts: Sequence[Concept] | None = None,
    ) -> None:
        """Record every array's shard digests (and ``concepts``, if given), then ``attrs``
        marked complete, then the consolidated metadata of the complete store, last. Every
        array of the layout needs a digest per shard."""
        expected = n_shards(attrs.images, attrs.shard_size)
        drop_consolidated(self.path)  # gone already after begin or mark_incomplete
        for name in array_names(attrs.categories):
            got = list(digests.get(name, []))
            if len(got) != expected:
                raise StoreError(
                    f"{self.path}: {name} has digests of {len(got)} shards, not {expected}: "
                    "a shard was not written"
                )
            self.array(name).attrs[DIGESTS_ATTR] = got
        if concepts is not None:
            self.group.attrs[CONCEPTS_ATTR] = [c.model_dump(mode="json") for c in concepts]
        done = attrs.model_copy(update={"complete": True})
        self.group.attrs[STORE_ATTR] = done.model_dump(mode="json")
        self._attrs = done
        consolidate(self.path)  # last: a copy of the metadata of the complete store


def merge_digests(per_shard: Iterable[Mapping[str, str]]) -> dict[str, list[str]]:
    """Array name → digests in shard order, from each shard's ``{name: digest}``."""
    out: dict[str, list[str]] = {}
    for shard in per_shard:
        for name, d in shard.items():
            out.setdefault(name, []).append(d)
    return out


def digest_mismatches(path: str | os.PathLike[str]) -> list[str]:
    """The shards of the store at ``path`` that do not read back with the digests recorded
    when they were written (missing, damaged or rewritten shard files, missing digests):
    one line each, empty when every array holds what its writer wrote. A store that cannot
    be opened is one line."""
    writer = StoreWriter(path)
    try:
        attrs = writer.attrs
        names = array_names(attrs.categories)
    except Exception as e:  # noqa: BLE001 - any damage to its metadata
        return [f"{path}: unreadable store metadata ({type(e).__name__})"]
    problems = []
    for name in names:
        try:
            recorded = writer.array(name).attrs.get(DIGESTS_ATTR)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{name}: unreadable ({type(e).__name__})")
            continue
        expected = n_shards(attrs.images, attrs.shard_size)
        if not isinstance(recorded, list) or len(recorded) != expected:
            problems.append(f"{name}: shard digests missing from its attributes")
            continue
        for j, want in enumerate(recorded):
            if not writer.shard_holds(j, {name: str(want)}):
                problems.append(f"{name} shard {j}: content differs from its recorded digest")
    return problems


def write_store(
    path: str | os.PathLike[str],
    attrs: StoreAttrs,
    concepts: Sequence[Concept],
    blocks: Iterable[Block],
    finish: bool = True,
) -> Path:
    """Write a complete store from ``blocks``, one per shard in order (the last may be
    short); ``attrs.complete`` is set by the protocol. ``finish=False`` stops before the
    last step, leaving the store incomplete, as an interrupted build does."""
    writer = StoreWriter.begin(path, attrs.model_copy(update={"complete": False}), concepts)
    digests = merge_digests(writer.write_shard(j, b) for j, b in enumerate(blocks))
    if finish:
        writer.finish(attrs, digests)
    return writer.path
