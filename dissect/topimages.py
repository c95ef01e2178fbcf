"""Each unit's top images: the store images with the largest per-image maximum of the
unit's activation map, best first, collected during a pass the dissection makes anyway.
Ties go to the lower image index, so the result does not depend on batch size or order.
"""

from __future__ import annotations

import numpy as np
import torch


class TopImages:
    """Running top-``k`` images per unit by per-image maximum activation."""

    def __init__(self, units: int, k: int):
        self.k = k
        self.values = np.zeros((units, 0), np.float64)
        self.indices = np.zeros((units, 0), np.int64)

    def add(self, maxima: torch.Tensor | np.ndarray, indices: np.ndarray) -> None:
        """``maxima`` (B, U): each image's maximum per unit; ``indices`` (B,) store indices."""
        m = maxima.detach().double().cpu().numpy() if isinstance(maxima, torch.Tensor) else maxima
        m = np.asarray(m, np.float64)
        vals = np.concatenate([self.values, m.T], axis=1)
        idx = np.concatenate([self.indices, np.broadcast_to(indices, m.T.shape)], axis=1)
        self.values, self.indices = rank_images(vals, idx, self.k)


def rank_images(values: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row (unit) the ``k`` best of (value, image index) pairs: values descending,
    ties to the lower index."""
    order = np.lexsort((indices, -values), axis=-1)[:, :k]
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(indices, order, axis=1)
