"""The Broden store, format version 1: one Zarr v3 group, readable with zarr alone.

The package: :mod:`~broden.store.layout` (array and attribute names, codecs, shards,
digests, :class:`Block`), :mod:`~broden.store.writer` (:class:`StoreWriter`, the write
protocol: incomplete first, whole shards, digests, complete last), :mod:`~broden.store.reader`
(:func:`open_store`, :class:`BrodenStore`), :mod:`~broden.store.shards` (the fast row
reader), :mod:`~broden.store.validate` (:func:`validate_store`),
:mod:`~broden.store.metadata` (spec-level edits of the ``zarr.json`` documents: dimension
names, consolidated metadata), :mod:`~broden.store.upgrade` (:func:`upgrade_store`: a
store of an earlier broden made readable by xarray).

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
one lose data. Every array's attributes hold ``shard_digests``, an XXH3-128 digest
(blake2b in older stores) of each shard's decoded content, taken when it was
written; :func:`validate_store` recomputes them (all-zero chunks are never written by
zarr and read back as zeros, so a missing file alone is not damage; a digest mismatch is).

Readable by xarray: every array records Zarr v3 ``dimension_names``
(:func:`~broden.store.layout.dimension_names`: ``images`` (image, y, x, rgb),
``pixel/<c>`` (image, <c>_layer, label_y, label_x), ``image/<c>`` (image, <c>_slot),
``meta/*`` (image,) and ``meta/orig_size`` (image, hw)), and a complete store's root
group holds consolidated metadata, written as the last step of the write protocol and
removed before any change, so it never describes an unfinished store; broden itself
always reads the live metadata. ``xarray.open_zarr(STORE)`` gives the images, with
``group="pixel"``, ``"image"`` or ``"meta"`` the labels and metadata.
"""

from broden.errors import StoreError
from broden.store.layout import (
    CONCEPTS_ATTR,
    DIGESTS_ATTR,
    IMAGE_CODEC,
    LABEL_CODEC,
    META_ARRAYS,
    STORE_ATTR,
    Block,
    array_name,
    array_names,
    digest_matches,
    dimension_names,
    shard_digest,
)
from broden.store.reader import BrodenStore, StoreSample, open_group, open_store, read_attrs
from broden.store.upgrade import upgrade_hint, upgrade_store
from broden.store.validate import validate_store
from broden.store.writer import StoreWriter, merge_digests, write_store

__all__ = [
    "CONCEPTS_ATTR",
    "DIGESTS_ATTR",
    "IMAGE_CODEC",
    "LABEL_CODEC",
    "META_ARRAYS",
    "STORE_ATTR",
    "Block",
    "BrodenStore",
    "StoreError",
    "StoreSample",
    "StoreWriter",
    "array_name",
    "array_names",
    "dimension_names",
    "merge_digests",
    "open_group",
    "open_store",
    "read_attrs",
    "digest_matches",
    "shard_digest",
    "upgrade_hint",
    "upgrade_store",
    "validate_store",
    "write_store",
]
