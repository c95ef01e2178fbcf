"""Resizing images and label maps to the store's sizes, as Broden did.

Images: S×S, no crop (aspect ratio not kept), bilinear with antialiasing (Pillow's
BILINEAR filter widens its support when shrinking), the filter Broden's
``scipy.misc.imresize`` used.

Label maps: S/2 × S/2 by nearest neighbour with the sampling positions of
``scipy.ndimage.zoom(order=0)``, which Broden used: output index ``o`` takes input
index ``floor(o · ((n - 1) / (m - 1)) + 0.5)`` (corner-aligned). One deliberate
difference: where zoom's floating-point overshoot at the last row or column lands
outside the input and returns 0 (a lost label), we clamp to the last pixel.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """H×W×3 uint8 RGB → size×size×3 uint8, bilinear with antialiasing."""
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Input indices sampled by ``scipy.ndimage.zoom(order=0)`` from n_in to n_out points."""
    if n_out == 1:
        return np.zeros(1, np.intp)
    idx = np.floor(np.arange(n_out) * ((n_in - 1) / (n_out - 1)) + 0.5)
    return np.minimum(idx, n_in - 1).astype(np.intp)


def label_grid(shape: tuple[int, int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the source pixels that a size×size label map samples."""
    return nearest_indices(shape[0], size), nearest_indices(shape[1], size)


def sample_labels(labels: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resize of a (K, H, W) label stack at the given grid."""
    return labels[:, rows[:, None], cols[None, :]]
