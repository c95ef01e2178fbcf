"""Streaming a store to the model: a torch Dataset whose items are whole batches read
as contiguous, shard-aligned slices of every array (never scattered indices, which
are slow on sharded Zarr arrays), a DataLoader over it with worker processes and pinned
memory, and the device choice (CUDA when present).

A dissection may cover a subset of the images (:func:`source_indices`: those of some
sources) and, under ``torch.distributed``, each process a part of them: the batches of
a set of image indices (:func:`batch_plan`) stay within one shard each and read each
run of consecutive images as one slice.

Each item holds the images (uint8, as stored), the pixel labels of all pixel
categories stacked into one pixel-major (n, L·L, Kp) int32 array (the layout the tally
gathers from), the whole-image labels
(n, Ki) int32, and the per-image histogram of global concept ids (n, C + 1) int64, in
which a whole-image label counts L² pixels. The histogram is computed in the workers,
off the main process.

Reads are verified (:class:`broden.store.verified.ShardVerifier`): each shard of each
array read is checked once against the digest recorded when it was written, by the one
batch of the shard that :func:`check_batches` names (the first; with worker processes,
one spread over them), which reads it whole and keeps it for the process's next batches
of it. A mismatch, a missing shard file or a shard that does not decode stops the
dissection with one :class:`~broden.errors.StoreError` naming the array and the shard.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from broden.dissect.errors import DissectError
from broden.errors import BrodenError
from broden.store import BrodenStore
from broden.store.verified import ShardVerifier


def batch_ranges(store: BrodenStore, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of every batch: at most ``batch_size`` images, never across a shard."""
    if batch_size < 1:
        raise DissectError(f"--batch-size must be at least 1, got {batch_size}")
    out: list[tuple[int, int]] = []
    for s0, s1 in store.shards():
        out.extend((a, min(a + batch_size, s1)) for a in range(s0, s1, batch_size))
    return out


def batch_plan(
    store: BrodenStore, batch_size: int, indices: np.ndarray | None = None
) -> list[np.ndarray]:
    """The store indices of every batch over ``indices`` (ascending; None: every image):
    at most ``batch_size`` images, all in one shard, in store order. Over every image
    these are the :func:`batch_ranges`."""
    if indices is None:
        return [np.arange(a, b, dtype=np.int64) for a, b in batch_ranges(store, batch_size)]
    if batch_size < 1:
        raise DissectError(f"--batch-size must be at least 1, got {batch_size}")
    idx = np.asarray(indices, np.int64)
    if not len(idx):
        return []
    cuts = np.flatnonzero(np.diff(idx // store.shard_size)) + 1
    return [
        g[a : a + batch_size] for g in np.split(idx, cuts) for a in range(0, len(g), batch_size)
    ]


def runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of consecutive values in ascending ``indices``."""
    if not len(indices):
        return []
    cuts = np.flatnonzero(np.diff(indices) != 1) + 1
    firsts = np.concatenate([[0], cuts])
    lasts = np.concatenate([cuts, [len(indices)]]) - 1
    return [(int(indices[a]), int(indices[b]) + 1) for a, b in zip(firsts, lasts, strict=True)]


def resolve_sources(store: BrodenStore, sources: Sequence[str] | str | None) -> list[str] | None:
    """The store's names of ``sources`` (comma-separated names allowed, matched
    case-insensitively), sorted; None (every image) for None or no names. Unknown
    names raise a :class:`DissectError` that lists the store's sources."""
    if sources is None:
        return None
    items = [sources] if isinstance(sources, str) else list(sources)
    names = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    if not names:
        return None
    known = list(dict.fromkeys([s.name for s in store.attrs.sources] + _source_names(store)))
    by_lower = {k.lower(): k for k in known}
    unknown = [n for n in names if n.lower() not in by_lower]
    if unknown:
        raise DissectError(
            f"--sources: unknown source names {unknown}; the store {store.path} holds images "
            f"of the sources {known}"
        )
    return sorted({by_lower[n.lower()] for n in names})


def _source_names(store: BrodenStore) -> list[str]:
    return list(dict.fromkeys(str(s) for s in store.meta("source")))


def source_indices(store: BrodenStore, sources: list[str] | None) -> np.ndarray:
    """Ascending store indices of the images of ``sources`` (from :func:`resolve_sources`;
    None: every image). A selection without images raises a :class:`DissectError`."""
    if sources is None:
        return np.arange(len(store), dtype=np.int64)
    wanted = set(sources)
    names = store.meta("source")
    idx = np.array([i for i, s in enumerate(names) if str(s) in wanted], np.int64)
    if not len(idx):
        raise DissectError(f"--sources {','.join(sources)}: no images of these in {store.path}")
    return idx


def describe(indices: np.ndarray) -> str:
    """``images 5-9`` for consecutive indices, ``3 images among 5-12`` otherwise."""
    if not len(indices):
        return "no images"
    a, b = int(indices[0]), int(indices[-1])
    if b - a + 1 == len(indices):
        return f"images {a}-{b}"
    return f"{len(indices)} images among {a}-{b}"


@dataclass
class StoreBatch:
    """One batch. ``start``/``stop``: its position in the sequence of images this process
    dissects (the rows of cached activations); ``index``: their store indices (None: the
    same as the positions)."""

    start: int
    stop: int
    images: torch.Tensor | None  # (n, S, S, 3) uint8
    pixel: torch.Tensor  # (n, L·L, Kp) int32, pixel-major
    image: torch.Tensor  # (n, Ki) int32
    counts: torch.Tensor  # (n, C + 1) int64
    index: np.ndarray | None = None  # (n,) int64 store indices
    checked: tuple[tuple[str, int], ...] = ()  # (array, shard) pairs checked reading it

    def __len__(self) -> int:
        return self.stop - self.start

    def indices(self) -> np.ndarray:
        """The store indices of the batch's images."""
        if self.index is not None:
            return self.index
        return np.arange(self.start, self.stop, dtype=np.int64)

    def describe(self) -> str:
        """``images 5-9`` (store indices), for messages."""
        return describe(self.indices())

    def to(self, device: torch.device) -> StoreBatch:
        nb = device.type == "cuda"
        return StoreBatch(
            self.start,
            self.stop,
            None if self.images is None else self.images.to(device, non_blocking=nb),
            self.pixel.to(device, non_blocking=nb),
            self.image.to(device, non_blocking=nb),
            self.counts.to(device, non_blocking=nb),
            self.index,
            self.checked,
        )

    def pin_memory(self) -> StoreBatch:  # called by the DataLoader's pinning thread
        return StoreBatch(
            self.start,
            self.stop,
            None if self.images is None else self.images.pin_memory(),
            self.pixel.pin_memory(),
            self.image.pin_memory(),
            self.counts.pin_memory(),
            self.index,
            self.checked,
        )


def check_batches(plan: Sequence[np.ndarray], shard_size: int, spread: int = 1) -> set[int]:
    """The items of ``plan`` that check their shard's digests: one per shard, the first
    of its batches, or with ``spread`` worker processes (which a DataLoader hands the
    items in turn) the one that falls to worker ``shard % spread``, so that the checks,
    which read whole shards, are shared out among the workers."""
    firsts: dict[int, tuple[int, int]] = {}  # shard → (first item, items)
    for i, batch in enumerate(plan):
        j = int(batch[0]) // shard_size
        first, count = firsts.get(j, (i, 0))
        firsts[j] = (first, count + 1)
    spread = max(spread, 1)
    out = set()
    for j, (first, count) in firsts.items():
        k = first + (j - first) % spread
        out.add(k if k < first + count else first)
    return out


class StoreBatches(Dataset[StoreBatch]):
    """Batches of a store, in store order: of every image, or of the store indices
    ``indices`` (ascending), item i holding the images ``plan[i]``; with ``verify``, each
    shard read is checked against its recorded digest (see the module docstring)."""

    def __init__(
        self,
        store: BrodenStore,
        batch_size: int,
        images: bool = True,
        labels: bool = True,
        indices: np.ndarray | None = None,
        verify: bool = True,
    ):
        self.store = store
        self.images = images
        self.labels = labels
        self.plan = batch_plan(store, batch_size, indices)
        self.offsets = np.cumsum([0] + [len(b) for b in self.plan]).tolist()
        self.n_ids = len(store.concepts) + 1
        self.pixel_cats = [c.name for c in store.categories if c.kind == "pixel"]
        self.image_cats = [c.name for c in store.categories if c.kind == "image"]
        self.reads = ShardVerifier(store)
        self.verify = verify
        self.spread(1)

    def spread(self, workers: int) -> None:
        """Share the shard checks out among ``workers`` processes (0: this one)."""
        self.checks = check_batches(self.plan, self.store.shard_size, workers)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> StoreBatch:
        try:
            return self._read(i)
        except BrodenError:
            raise
        except Exception as e:  # a damaged shard: the codec's error, with where it happened
            raise DissectError(
                f"{self.store.path}: cannot read {describe(self.plan[i])} ({type(e).__name__}: "
                f"{e}); `broden validate {self.store.path}` lists what is damaged"
            ) from None

    def _rows(
        self, a: int, b: int, check: bool
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """Images ``[a, b)`` (or None) and their pixel (n, Kp, L, L) and whole-image
        (n, Ki) labels as int32; ``check``: the shard's digests are checked."""
        n, L = b - a, self.store.label_size
        if not self.labels:
            imgs = self.reads.rows("images", a, b, check) if self.images else None
            return imgs, np.zeros((n, 0, L, L), np.int32), np.zeros((n, 0), np.int32)
        blk = self.reads.read_block(a, b, images=self.images, check=check)
        pix = [blk.pixel[c] for c in self.pixel_cats]
        pixel = np.concatenate(pix, axis=1) if pix else np.zeros((n, 0, L, L), np.uint16)
        img = [blk.image_labels[c] for c in self.image_cats]
        image = np.concatenate(img, axis=1) if img else np.zeros((n, 0), np.uint16)
        return (blk.images if self.images else None), pixel.astype(np.int32), image.astype(np.int32)

    def _read(self, i: int) -> StoreBatch:
        index = self.plan[i]
        start, stop = self.offsets[i], self.offsets[i + 1]
        n = stop - start
        L = self.store.label_size
        check = self.verify and i in self.checks
        parts = [self._rows(a, b, check) for a, b in runs(index)]
        checked = tuple(self.reads.take_checked())
        imgs = _cat([p[0] for p in parts if p[0] is not None]) if self.images else None
        if not self.labels:
            return StoreBatch(
                start,
                stop,
                None if imgs is None else torch.from_numpy(imgs),
                torch.zeros((n, L * L, 0), dtype=torch.int32),
                torch.zeros((n, 0), dtype=torch.int32),
                torch.zeros((n, self.n_ids), dtype=torch.int64),
                index,
                checked,
            )
        pixel = _cat([p[1] for p in parts])
        image = _cat([p[2] for p in parts])
        if pixel.size and pixel.max() >= self.n_ids or image.size and image.max() >= self.n_ids:
            raise DissectError(
                f"{self.store.path}: {describe(index)} hold label ids above the concept "
                f"table's {self.n_ids - 1}; run `broden validate`"
            )
        offs = (np.arange(n, dtype=np.int64) * self.n_ids)[:, None]
        counts = np.bincount(
            (pixel.reshape(n, -1) + offs).ravel(), minlength=n * self.n_ids
        ).reshape(n, self.n_ids)
        if image.size:
            counts += np.bincount((image + offs).ravel(), minlength=n * self.n_ids).reshape(
                n, self.n_ids
            ) * (L * L)
        counts[:, 0] = 0
        pixel_major = np.ascontiguousarray(pixel.reshape(n, -1, L * L).transpose(0, 2, 1))
        return StoreBatch(
            start,
            stop,
            None if imgs is None else torch.from_numpy(imgs),
            torch.from_numpy(pixel_major),
            torch.from_numpy(image),
            torch.from_numpy(counts.astype(np.int64)),
            index,
            checked,
        )


def _cat(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _identity(x: StoreBatch) -> StoreBatch:
    return x


def loader(dataset: StoreBatches, workers: int, device: torch.device) -> DataLoader[StoreBatch]:
    """A DataLoader yielding the dataset's batches in order (pinned memory on CUDA)."""
    if workers < 0:
        raise DissectError(f"--workers must be 0 or more, got {workers}")
    workers = min(workers, len(dataset))
    dataset.spread(workers)
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        collate_fn=cast(Any, _identity),
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )


def iterate(dataset: StoreBatches, workers: int, device: torch.device) -> Iterator[StoreBatch]:
    """The dataset's batches, on ``device``; the shards that worker processes checked are
    recorded as checked in this process's store, for the next pass."""
    try:
        for batch in loader(dataset, workers, device):
            dataset.store.checked_shards.update(batch.checked)
            yield batch.to(device)
    except BrodenError as e:
        raise type(e)(_worker_message(str(e), type(e).__name__)) from None
    finally:
        dataset.reads.release()


def _worker_message(message: str, kind: str = "DissectError") -> str:
    """A worker's error as the DataLoader re-raises it carries the worker's traceback in
    its message, ending with ``<kind>: <message>``: keep the original message only."""
    if "Original Traceback" not in message:
        return message
    marker = f"{kind}: "
    tail = message[message.rfind(marker) + len(marker) :] if marker in message else message
    return tail.strip()


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cpu``; ``cuda`` / ``cuda:N``."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DissectError(
                f"--device {name}: no CUDA device is available here (torch {torch.__version__}); "
                "use --device cpu or auto"
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise DissectError(f"unknown --device {name!r}; use auto, cpu or cuda[:N]")
