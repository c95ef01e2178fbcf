"""Precomputed activations (``--activations``): an N×U×h×w array (tokens N×T×D and
channels-last arrays too) whose rows belong to store images, opened from a .npy file
(memory-mapped), a Zarr array or memory; its fingerprint; and :class:`ActivationRows`,
the unit maps of any store images read from it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from broden.dissect.errors import DissectError
from broden.dissect.hooks import Reading, read_unit_maps


class ActivationRows:
    """The unit maps of store images from an activation array holding either every store
    image (row i: image i) or only ``selected`` ones (row j: the j-th of ``selected``,
    ascending store indices)."""

    def __init__(
        self,
        acts: Any,
        layer: str,
        layout: str = "auto",
        prefix_tokens: int | None = None,
        selected: np.ndarray | None = None,
    ):
        self.acts, self.layer = acts, layer
        self.layout, self.prefix_tokens = layout, prefix_tokens
        self.reading: Reading | None = None  # how the latest rows were read
        self.selected = selected

    def maps(self, indices: np.ndarray, device: torch.device) -> torch.Tensor:
        """(n, U, h, w) maps of the store images ``indices`` (ascending; read as one slice
        of the array when they are consecutive rows, as a store batch's are)."""
        idx = np.asarray(indices, np.int64)
        rows = idx if self.selected is None else np.searchsorted(self.selected, idx)
        a, b = int(rows[0]), int(rows[-1]) + 1
        chunk = self.acts[a:b]
        t = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk))
        if b - a != len(rows):
            t = t[torch.from_numpy(rows - a)]
        maps, self.reading = read_unit_maps(
            t.to(device), self.layer, self.layout, self.prefix_tokens
        )
        return maps


def activation_fingerprint(acts: Any, path: Path | None) -> str:
    """Identity of an activation array: for a file, its path, size, modification time and
    first and last MiB; for a Zarr folder, every file's size and time; in memory, its
    content."""
    h = hashlib.sha256()
    if path is not None and path.is_file():
        stat = path.stat()
        h.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(0, stat.st_size - (1 << 20)))
            h.update(f.read())
    elif path is not None and path.is_dir():
        h.update(str(path.resolve()).encode())
        for p in sorted(path.rglob("*")):
            if p.is_file():
                s = p.stat()
                h.update(f"{p.relative_to(path)}|{s.st_size}|{s.st_mtime_ns}".encode())
    else:
        h.update(f"{tuple(acts.shape)}|{acts.dtype}".encode())
        step = max(1, (1 << 26) // max(1, int(np.prod(acts.shape[1:])) * 4))
        for a in range(0, acts.shape[0], step):
            chunk = acts[a : a + step]
            chunk = chunk.detach().cpu().numpy() if isinstance(chunk, torch.Tensor) else chunk
            h.update(np.ascontiguousarray(chunk).tobytes())
    return h.hexdigest()[:20]


def open_activations(activations: Any) -> tuple[Any, Path | None]:
    """Precomputed activations as an array-like (a memory-mapped .npy, a Zarr array, or
    the array given), and the file they came from (None for an in-memory array)."""
    if isinstance(activations, (str, os.PathLike)):
        path = Path(activations)
        if not path.exists():
            raise DissectError(f"--activations {path}: no such file or folder")
        if path.is_file() and path.suffix == ".npy":
            try:
                return np.load(path, mmap_mode="r", allow_pickle=False), path
            except ValueError as e:
                raise DissectError(
                    f"--activations {path}: not a readable .npy array ({e})"
                ) from None
        try:
            import zarr

            arr = zarr.open_array(str(path), mode="r")
        except Exception as e:
            raise DissectError(
                f"--activations {path}: neither a .npy file nor a Zarr array ({type(e).__name__})"
            ) from None
        return arr, path
    if isinstance(activations, (np.ndarray, torch.Tensor)) or hasattr(activations, "shape"):
        return activations, None
    raise DissectError(f"activations must be a .npy/Zarr path or an array, not {type(activations)}")
