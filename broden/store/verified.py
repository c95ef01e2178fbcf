"""Verified reads: every shard of a store checked, the first time it is read, against the
digest recorded when it was written (:func:`~broden.store.layout.digest_matches`: the
XXH3-128 digest of the shard's decoded content, or blake2b in older stores, that
:func:`~broden.store.validate_store` recomputes too).

A :class:`ShardVerifier` reads rows of a store's arrays like :meth:`BrodenStore.rows`;
asked to ``check`` a shard not yet checked, it reads the whole shard, compares its digest
and keeps the shard in memory for the next rows of it (one shard per array), so a reader
going through the store in order decodes each shard once. A mismatch, a missing shard
file or a shard that does not decode is one :class:`StoreError` naming the array and the
shard. The pairs (array, shard) found to match go into the store's ``checked_shards``, so
they are checked once per store object, whichever verifier read them. A store written
before shards had digests reads unverified, without an error.

>>> v = ShardVerifier(open_store("broden.zarr"))              # doctest: +SKIP
>>> block = v.read_block(0, 32)  # shard 0 of every array read whole and checked  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from broden.errors import StoreError
from broden.store.layout import DIGESTS_ATTR, Block, digest_matches, n_shards, shard_rows
from broden.store.reader import WHOLE_ARRAYS, BrodenStore
from broden.store.shards import shard_file


class ShardVerifier:
    """Rows of ``store``'s arrays, each shard checked against its recorded digest the first
    time a read asks to check it."""

    def __init__(self, store: BrodenStore):
        self.store = store
        self._digests: dict[str, list[str] | None] = {}
        self._held: dict[str, tuple[int, np.ndarray]] = {}  # array → (shard, its rows)
        self._fresh: list[tuple[str, int]] = []

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_held"], state["_fresh"] = {}, []  # the held shards stay in this process
        return state

    @property
    def checked(self) -> set[tuple[str, int]]:
        """The (array, shard) pairs found to match their digests (the store's)."""
        return self.store.checked_shards

    def take_checked(self) -> list[tuple[str, int]]:
        """The (array, shard) pairs checked since the last call (for a process that reads
        on behalf of another to report back)."""
        fresh, self._fresh = self._fresh, []
        return fresh

    def release(self) -> None:
        """Drop the shards held in memory."""
        self._held.clear()

    def digests(self, name: str) -> list[str] | None:
        """The recorded digests of array ``name``'s shards (None: it has none, as a store
        written before digests existed)."""
        if name not in self._digests:
            recorded = self.store.array(name).attrs.get(DIGESTS_ATTR)
            expected = n_shards(len(self.store), self.store.shard_size)
            if recorded is not None and (
                not isinstance(recorded, list)
                or len(recorded) != expected
                or not all(isinstance(d, str) for d in recorded)
            ):
                got = f"{len(recorded)} entries" if isinstance(recorded, list) else "no list"
                raise StoreError(
                    f"{self.store.path}: {name}: its '{DIGESTS_ATTR}' attribute holds {got}, "
                    f"not the digests of its {expected} shards; `broden validate "
                    f"{self.store.path}` lists what is damaged"
                )
            self._digests[name] = recorded
        return self._digests[name]

    def rows(self, name: str, start: int, stop: int, check: bool = True) -> np.ndarray:
        """Rows ``[start, stop)`` of array ``name``; with ``check``, every shard they lie
        in that was not checked yet is read whole and checked first."""
        shard = self.store.shard_size
        stop = min(stop, len(self.store))
        if stop <= start:
            return self.store.rows(name, start, stop)
        parts = [
            self._part(name, j, max(j * shard, start), min((j + 1) * shard, stop), check)
            for j in range(start // shard, -(-stop // shard))
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read_block(self, start: int, stop: int, images: bool = True, check: bool = True) -> Block:
        """:meth:`BrodenStore.read_block` through :meth:`rows`."""
        return self.store.read_block(
            start, stop, images, lambda name, a, b: self.rows(name, a, b, check)
        )

    def check_shard(self, name: str, shard: int) -> np.ndarray:
        """Shard ``shard`` of array ``name``, read whole and checked against its digest."""
        a, b = shard_rows(shard, len(self.store), self.store.shard_size)
        data = self.store.rows(name, a, b)
        digests = self.digests(name)
        if digests is not None and (name, shard) not in self.checked:
            if not digest_matches(data, digests[shard]):
                raise StoreError(self._mismatch(name, shard))
            self._mark(name, shard)
        return data

    def _part(self, name: str, j: int, start: int, stop: int, check: bool) -> np.ndarray:
        """Rows ``[start, stop)``, all in shard ``j``."""
        held = self._held.get(name)
        base = j * self.store.shard_size
        if held is not None and held[0] == j:
            return held[1][start - base : stop - base]
        if name.startswith(WHOLE_ARRAYS):  # in memory whole: checked whole, once
            if check:
                self._check_whole(name)
            return self.store.rows(name, start, stop)
        if not check or (name, j) in self.checked or self.digests(name) is None:
            return self.store.rows(name, start, stop)
        data = self.check_shard(name, j)
        self._held[name] = (j, data)
        return data[start - base : stop - base]

    def _check_whole(self, name: str) -> None:
        digests = self.digests(name)
        count = n_shards(len(self.store), self.store.shard_size)
        if digests is None or all((name, j) in self.checked for j in range(count)):
            return
        data = self.store.rows(name, 0, len(self.store))
        for j in range(count):
            if (name, j) in self.checked:
                continue
            a, b = shard_rows(j, len(self.store), self.store.shard_size)
            if not digest_matches(data[a:b], digests[j]):
                raise StoreError(self._mismatch(name, j))
            self._mark(name, j)

    def _mark(self, name: str, shard: int) -> None:
        self.checked.add((name, shard))
        self._fresh.append((name, shard))

    def _mismatch(self, name: str, shard: int) -> str:
        path = self.store.path
        a, b = shard_rows(shard, len(self.store), self.store.shard_size)
        where = f"{path}: {name} shard {shard} (images {a}-{b - 1})"
        file = shard_file(path / name, shard)
        if file is not None and not file.exists():
            problem = f"its file {file.relative_to(path)} is missing"
        else:
            problem = "its content differs from the digest recorded when it was written"
        return f"{where}: {problem}; `broden validate {path}` lists what is damaged"
