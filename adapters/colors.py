"""Color concepts: the 11 basic color names of van de Weijer et al. (TIP 2009) per pixel.

Broden names every pixel of every image with the most probable of the 11 color
terms, looked up in a 32×32×32 table indexed by ``[R // 8, G // 8, B // 8]`` of the
original-resolution RGB image (``data_manifests/w2color.npy``, the table Broden
shipped). Local label ids are 1..11 in :data:`COLOR_NAMES` order; the build gives
them the ``-c`` suffix (``red-c``). Colors are not a separate image set: the build
applies them to every image of every source when the config says ``colors: true``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import cv2
import numpy as np

COLOR_NAMES: tuple[str, ...] = (
    "black", "blue", "brown", "grey", "green", "orange",
    "pink", "purple", "red", "white", "yellow",
)  # fmt: skip


@cache
def color_table() -> np.ndarray:
    """The (32, 32, 32) uint8 table of color-name indices 0..10, indexed [R//8, G//8, B//8]."""
    with resources.files("broden.data_manifests").joinpath("w2color.npy").open("rb") as f:
        table = np.load(f)
    if table.shape != (32, 32, 32) or table.max() >= len(COLOR_NAMES):
        raise RuntimeError("data_manifests/w2color.npy is damaged: expected 32×32×32 indices")
    return np.ascontiguousarray(table, dtype=np.uint8)


def color_vocabulary() -> dict[int, list[str]]:
    """Local ids 1..11 → color name (without the ``-c`` suffix the build adds)."""
    return {i + 1: [n] for i, n in enumerate(COLOR_NAMES)}


def color_counts(image: np.ndarray) -> np.ndarray:
    """Pixels of each color name in an H×W×3 uint8 RGB image: int64 array of 12 entries,
    index = local id (entry 0 is always 0)."""
    hist = cv2.calcHist([image], [0, 1, 2], None, [32, 32, 32], [0, 256, 0, 256, 0, 256])
    counts = np.bincount(
        color_table().ravel(), weights=hist.ravel().astype(np.float64), minlength=11
    )
    out = np.zeros(len(COLOR_NAMES) + 1, np.int64)
    out[1:] = np.rint(counts).astype(np.int64)
    return out


def color_labels(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Color local ids (1..11) of the image pixels at ``rows`` × ``cols`` (a grid sample,
    as nearest-neighbour resizing takes it): uint16 array (len(rows), len(cols))."""
    px = image[np.ix_(rows, cols)] >> 3
    idx = (px[..., 0].astype(np.intp) << 10) | (px[..., 1].astype(np.intp) << 5) | px[..., 2]
    return color_table().ravel()[idx].astype(np.uint16) + 1
