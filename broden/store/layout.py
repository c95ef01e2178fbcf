"""The layout of a store (format version 1): the names of its arrays and attributes, their
codecs, shard boundaries and digests, and :class:`Block`, the rows of every array.

Every array shares the shard boundaries (images ``[j·shard, (j+1)·shard)``) and each
writer writes whole shards: Zarr rewrites a shard whole, so two writers sharing one lose
data. Every array's attributes hold ``shard_digests``, a digest of each shard's decoded
content taken when it was written: ``xxh3:`` and the 128-bit XXH3 hash in hex (fast enough
to check on every read), or, in stores written by earlier versions, a bare 32-digit blake2b
hex digest; :func:`digest_matches` reads both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import xxhash
from zarr.codecs import ZstdCodec

from broden.adapters.categories import Kind
from broden.schema import CategorySpec

#: the root group attribute holding :class:`~broden.schema.StoreAttrs`
STORE_ATTR = "broden"
#: the root group attribute holding the concept table
CONCEPTS_ATTR = "concepts"
#: each array's attribute holding its shards' digests
DIGESTS_ATTR = "shard_digests"

#: Measured in bench/codecs.py on the real fixture photos at 224: zstd level 1
#: compresses as well as level 3 (1.34× vs 1.38×) and encodes 3.5× faster.
IMAGE_CODEC = ZstdCodec(level=1)
#: Label maps compress 25-45× with zstd level 3 (DESIGN.md §4).
LABEL_CODEC = ZstdCodec(level=3)

IMAGES = "images"
META_ARRAYS = ("meta/source", "meta/source_id", "meta/split", "meta/orig_size")


def array_name(category: CategorySpec | str, kind: Kind | None = None) -> str:
    """The array of a category's labels: ``pixel/<name>`` for a per-pixel category,
    ``image/<name>`` for a whole-image one (``category`` a spec, or a name and ``kind``)."""
    if isinstance(category, CategorySpec):
        return f"{category.kind}/{category.name}"
    if kind is None:
        raise ValueError(f"the array of category {category!r} needs its kind")
    return f"{kind}/{category}"


#: the dimension every array shares: one row per image
IMAGE_DIM = "image"


def dimension_names(array: CategorySpec | str, kind: Kind | None = None) -> tuple[str, ...]:
    """The Zarr v3 ``dimension_names`` of an array of the layout (what xarray reads as
    its variable's dimensions); ``array`` is an array name (``images``, ``pixel/object``,
    ``meta/split``), a category spec, or a category name and its ``kind``.

    ====================================  ==========================================
    ``images``                            ``(image, y, x, rgb)``
    ``pixel/<c>``                         ``(image, <c>_layer, label_y, label_x)``
    ``image/<c>``                         ``(image, <c>_slot)``
    ``meta/source``, ``source_id``,       ``(image,)``
    ``split``
    ``meta/orig_size``                    ``(image, hw)``
    ====================================  ==========================================

    xarray gives a dimension name one size within a group, and the categories of a group
    have different layer counts K, so each category has a layer (slot) dimension of its
    own. Every array shares ``image``, the row.
    """
    if isinstance(array, CategorySpec) or kind is not None:
        array = array_name(array, kind)
    group, _, leaf = array.partition("/")
    if array == IMAGES:
        return (IMAGE_DIM, "y", "x", "rgb")
    if group == "pixel" and leaf:
        return (IMAGE_DIM, f"{leaf}_layer", "label_y", "label_x")
    if group == "image" and leaf:
        return (IMAGE_DIM, f"{leaf}_slot")
    if array == "meta/orig_size":
        return (IMAGE_DIM, "hw")
    if array in META_ARRAYS:
        return (IMAGE_DIM,)
    raise ValueError(f"{array!r} is not an array of the store layout")


def array_names(categories: Iterable[CategorySpec]) -> list[str]:
    """Every array of a store with these categories, in the store's order."""
    return [IMAGES, *(array_name(c) for c in categories), *META_ARRAYS]


def n_shards(images: int, shard: int) -> int:
    """Shards of ``shard`` images that hold ``images`` images."""
    return -(-images // shard)


def shard_rows(index: int, images: int, shard: int) -> tuple[int, int]:
    """[start, stop) of shard ``index``."""
    start = index * shard
    return start, min(start + shard, images)


#: the prefix of an XXH3-128 shard digest (a digest without one is a blake2b digest)
XXH3 = "xxh3:"


def _digest_parts(data: np.ndarray) -> tuple[bytes, memoryview | bytes]:
    """What a shard digest covers: a header (shape and dtype) and the content's bytes
    (text arrays as the JSON list of their strings)."""
    if data.dtype.kind in "OUT":
        return b"", json.dumps([str(x) for x in data.ravel()]).encode()
    flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return f"{data.shape}{data.dtype.str}".encode(), memoryview(flat.data)


def shard_digest(data: np.ndarray) -> str:
    """Digest of a shard's decoded content (shape, dtype and bytes): ``xxh3:`` and the
    XXH3-128 hash in hex. Not cryptographic: it detects damage and stale shards, not a
    forger (who could rewrite the recorded digests as easily as the shard)."""
    head, body = _digest_parts(data)
    h = xxhash.xxh3_128(head)
    h.update(body)
    return XXH3 + h.hexdigest()


def legacy_digest(data: np.ndarray) -> str:
    """The blake2b digest (16 bytes, hex) that stores written before XXH3 recorded."""
    head, body = _digest_parts(data)
    h = hashlib.blake2b(head, digest_size=16)
    h.update(body)
    return h.hexdigest()


def digest_matches(data: np.ndarray, recorded: str) -> bool:
    """Whether ``data`` has the ``recorded`` digest, XXH3 or (older stores) blake2b."""
    if recorded.startswith(XXH3):
        return shard_digest(data) == recorded
    return legacy_digest(data) == recorded


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

    def arrays(self) -> dict[str, np.ndarray]:
        """The block as the store's arrays: array name → rows."""
        parts: dict[str, np.ndarray] = {IMAGES: self.images}
        parts.update({array_name(c, "pixel"): a for c, a in self.pixel.items()})
        parts.update({array_name(c, "image"): a for c, a in self.image_labels.items()})
        parts["meta/source"] = np.array(self.source, dtype=str)
        parts["meta/source_id"] = np.array(self.source_id, dtype=str)
        parts["meta/split"] = np.array(self.split, dtype=str)
        parts["meta/orig_size"] = np.asarray(self.orig_size, np.int32)
        return parts

    @staticmethod
    def concat(blocks: list[Block]) -> Block:
        """The rows of ``blocks`` one after the other (same categories and layers)."""
        first = blocks[0]
        return Block(
            images=np.concatenate([b.images for b in blocks]),
            pixel={k: np.concatenate([b.pixel[k] for b in blocks]) for k in first.pixel},
            image_labels={
                k: np.concatenate([b.image_labels[k] for b in blocks]) for k in first.image_labels
            },
            source=[s for b in blocks for s in b.source],
            source_id=[s for b in blocks for s in b.source_id],
            split=[s for b in blocks for s in b.split],
            orig_size=np.concatenate([b.orig_size for b in blocks]),
        )
