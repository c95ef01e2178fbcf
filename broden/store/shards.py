"""Fast reads of single rows from sharded arrays of a local store, per the Zarr v3 spec.

zarr-python answers each read through its asyncio machinery, with a thread hop for the
file read and another for decoding: about 2-3 ms per call on our 2-core machines, so an
image with four label arrays took ~10 ms, whatever its size. The sharding codec's layout
is part of the Zarr v3 specification (``sharding_indexed``): a shard file is the inner
chunks' encoded bytes followed, with ``index_location: end``, by an index of
``(offset, nbytes)`` uint64 pairs per inner chunk (2**64 - 1 for an empty chunk) and a
crc32c checksum. For arrays laid out the way :mod:`broden.store` writes them (one row per
inner chunk, ``bytes`` + ``zstd`` codecs, index at the end, default chunk keys), a
:class:`ShardedRowReader` reads a row with one ``pread`` and one zstd decode, caching each
shard's index. Anything else (other codecs, remote stores) returns None from
:meth:`ShardedRowReader.for_array` and the caller uses zarr. ``broden validate`` always
reads through zarr, which verifies the index checksums.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from numcodecs import Zstd

_EMPTY = np.uint64(2**64 - 1)
_DTYPES = {"uint8": "u1", "uint16": "<u2", "int32": "<i4"}


def shard_key(shard: int, ndim: int) -> str:
    """The file of shard ``shard`` (along axis 0) of an ``ndim``-D array under the default
    chunk key encoding, relative to the array's folder: ``c/<shard>/0/0/...``."""
    return "/".join(["c", str(shard)] + ["0"] * (ndim - 1))


def shard_file(array_dir: Path, shard: int) -> Path | None:
    """The file of shard ``shard`` of the array stored in ``array_dir`` (None: its metadata
    is unreadable or names another chunk key encoding). The file need not exist: zarr
    writes no file for a shard that is all fill value."""
    try:
        meta: dict[str, Any] = json.loads((array_dir / "zarr.json").read_text())
        enc = meta["chunk_key_encoding"]
        ndim = len(meta["shape"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if enc.get("name") != "default" or enc.get("configuration", {}).get("separator", "/") != "/":
        return None
    return array_dir / shard_key(shard, ndim)


class ShardedRowReader:
    """Reads rows (index along axis 0) of one sharded array straight from its shard files."""

    def __init__(
        self,
        root: Path,
        shape: tuple[int, ...],
        shard_rows: int,
        dtype: np.dtype,
        fill: int,
    ):
        self.root = root
        self.shape = shape
        self.shard_rows = shard_rows
        self.row_shape = shape[1:]
        self.dtype = dtype
        self.fill = fill
        self._zstd = Zstd()
        self._fds: dict[int, int] = {}
        self._index: dict[int, np.ndarray] = {}

    @classmethod
    def for_array(cls, array_dir: Path) -> ShardedRowReader | None:
        """A reader for the array stored in ``array_dir``, or None if its layout is another."""
        try:
            meta: dict[str, Any] = json.loads((array_dir / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        try:
            shape = tuple(meta["shape"])
            (codec,) = meta["codecs"]
            cfg = codec["configuration"]
            inner = tuple(cfg["chunk_shape"])
            shard = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
            names = [c["name"] for c in cfg["codecs"]]
            index_names = [c["name"] for c in cfg["index_codecs"]]
            key_enc = meta["chunk_key_encoding"]
            ok = (
                codec["name"] == "sharding_indexed"
                and cfg.get("index_location", "end") == "end"
                and names == ["bytes", "zstd"]
                and cfg["codecs"][0].get("configuration", {}).get("endian", "little") == "little"
                and index_names == ["bytes", "crc32c"]
                and key_enc["name"] == "default"
                and key_enc.get("configuration", {}).get("separator", "/") == "/"
                and inner[0] == 1
                and inner[1:] == shape[1:]
                and shard[1:] == shape[1:]
                and meta["data_type"] in _DTYPES
                and isinstance(meta.get("fill_value", 0), int)
            )
        except (KeyError, TypeError, ValueError):
            return None
        if not ok:
            return None
        return cls(
            array_dir, shape, shard[0], np.dtype(_DTYPES[meta["data_type"]]), meta["fill_value"]
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"], state["_index"] = {}, {}  # file descriptors do not cross processes
        return state

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown os may be gone
            self.close()

    def _shard(self, shard: int) -> tuple[int, np.ndarray] | None:
        index = self._index.get(shard)
        if index is not None:
            return self._fds[shard], index
        try:
            fd = os.open(self.root / shard_key(shard, len(self.shape)), os.O_RDONLY)
        except FileNotFoundError:
            return None  # never written: every chunk is the fill value
        n = self.shard_rows
        size = os.fstat(fd).st_size
        raw = os.pread(fd, n * 16 + 4, size - (n * 16 + 4))
        index = np.frombuffer(raw[: n * 16], "<u8").reshape(n, 2)
        self._fds[shard], self._index[shard] = fd, index
        return fd, index

    def read(self, row: int) -> np.ndarray:
        """Row ``row``: an array of shape ``shape[1:]``."""
        if not 0 <= row < self.shape[0]:
            raise IndexError(f"row {row} out of range 0..{self.shape[0] - 1}")
        shard, pos = divmod(row, self.shard_rows)
        found = self._shard(shard)
        if found is None or found[1][pos, 0] == _EMPTY:
            return np.full(self.row_shape, self.fill, self.dtype)
        fd, index = found
        offset, nbytes = int(index[pos, 0]), int(index[pos, 1])
        data = self._zstd.decode(os.pread(fd, nbytes, offset))
        return np.frombuffer(data, self.dtype).reshape(self.row_shape)
