"""Streaming a store to the model: a torch Dataset whose items are whole batches read
as one contiguous, shard-aligned slice of every array (never scattered indices, which
are slow on sharded Zarr arrays), a DataLoader over it with worker processes and pinned
memory, and the device choice (CUDA when present).

Each item holds the images (uint8, as stored), the pixel labels of all pixel
categories stacked into one pixel-major (n, L·L, Kp) int32 array (the layout the tally
gathers from), the whole-image labels
(n, Ki) int32, and the per-image histogram of global concept ids (n, C + 1) int64, in
which a whole-image label counts L² pixels. The histogram is computed in the workers,
off the main process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from broden.store import BrodenStore
from dissect.errors import DissectError


def batch_ranges(store: BrodenStore, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of every batch: at most ``batch_size`` images, never across a shard."""
    if batch_size < 1:
        raise DissectError(f"--batch-size must be at least 1, got {batch_size}")
    out: list[tuple[int, int]] = []
    for s0, s1 in store.shards():
        out.extend((a, min(a + batch_size, s1)) for a in range(s0, s1, batch_size))
    return out


@dataclass
class StoreBatch:
    start: int
    stop: int
    images: torch.Tensor | None  # (n, S, S, 3) uint8
    pixel: torch.Tensor  # (n, L·L, Kp) int32, pixel-major
    image: torch.Tensor  # (n, Ki) int32
    counts: torch.Tensor  # (n, C + 1) int64

    def __len__(self) -> int:
        return self.stop - self.start

    def indices(self) -> np.ndarray:
        return np.arange(self.start, self.stop, dtype=np.int64)

    def to(self, device: torch.device) -> StoreBatch:
        nb = device.type == "cuda"
        return StoreBatch(
            self.start,
            self.stop,
            None if self.images is None else self.images.to(device, non_blocking=nb),
            self.pixel.to(device, non_blocking=nb),
            self.image.to(device, non_blocking=nb),
            self.counts.to(device, non_blocking=nb),
        )

    def pin_memory(self) -> StoreBatch:  # called by the DataLoader's pinning thread
        return StoreBatch(
            self.start,
            self.stop,
            None if self.images is None else self.images.pin_memory(),
            self.pixel.pin_memory(),
            self.image.pin_memory(),
            self.counts.pin_memory(),
        )


class StoreBatches(Dataset[StoreBatch]):
    """Batches of a store, in store order (item i = images ``ranges[i]``)."""

    def __init__(
        self, store: BrodenStore, batch_size: int, images: bool = True, labels: bool = True
    ):
        self.store = store
        self.images = images
        self.labels = labels
        self.ranges = batch_ranges(store, batch_size)
        self.n_ids = len(store.concepts) + 1
        self.pixel_cats = [c.name for c in store.categories if c.kind == "pixel"]
        self.image_cats = [c.name for c in store.categories if c.kind == "image"]

    def __len__(self) -> int:
        return len(self.ranges)

    def __getitem__(self, i: int) -> StoreBatch:
        try:
            return self._read(i)
        except DissectError:
            raise
        except Exception as e:  # a damaged shard: the codec's error, with where it happened
            start, stop = self.ranges[i]
            raise DissectError(
                f"{self.store.path}: cannot read images {start}-{stop - 1} ({type(e).__name__}: "
                f"{e}); `broden validate {self.store.path}` lists what is damaged"
            ) from None

    def _read(self, i: int) -> StoreBatch:
        start, stop = self.ranges[i]
        n = stop - start
        L = self.store.label_size
        if not self.labels:
            imgs = np.asarray(self.store.array("images")[start:stop]) if self.images else None
            return StoreBatch(
                start,
                stop,
                None if imgs is None else torch.from_numpy(imgs),
                torch.zeros((n, L * L, 0), dtype=torch.int32),
                torch.zeros((n, 0), dtype=torch.int32),
                torch.zeros((n, self.n_ids), dtype=torch.int64),
            )
        blk = self.store.read_block(start, stop, images=self.images)
        pix = [blk.pixel[c] for c in self.pixel_cats]
        pixel = np.concatenate(pix, axis=1) if pix else np.zeros((n, 0, L, L), np.uint16)
        img = [blk.image_labels[c] for c in self.image_cats]
        image = np.concatenate(img, axis=1) if img else np.zeros((n, 0), np.uint16)
        pixel = pixel.astype(np.int32)
        image = image.astype(np.int32)
        if pixel.size and pixel.max() >= self.n_ids or image.size and image.max() >= self.n_ids:
            raise DissectError(
                f"{self.store.path}: images {start}-{stop - 1} hold label ids above the concept "
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
            torch.from_numpy(blk.images) if self.images else None,
            torch.from_numpy(pixel_major),
            torch.from_numpy(image),
            torch.from_numpy(counts.astype(np.int64)),
        )


def _identity(x: StoreBatch) -> StoreBatch:
    return x


def loader(dataset: StoreBatches, workers: int, device: torch.device) -> DataLoader[StoreBatch]:
    """A DataLoader yielding the dataset's batches in order (pinned memory on CUDA)."""
    if workers < 0:
        raise DissectError(f"--workers must be 0 or more, got {workers}")
    workers = min(workers, len(dataset))
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
    """The dataset's batches, on ``device``."""
    try:
        for batch in loader(dataset, workers, device):
            yield batch.to(device)
    except DissectError as e:
        raise DissectError(_worker_message(str(e))) from None


def _worker_message(message: str) -> str:
    """A worker's error as the DataLoader re-raises it carries the worker's traceback in
    its message: keep the original message only."""
    if "Original Traceback" not in message:
        return message
    marker = "DissectError: "
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
