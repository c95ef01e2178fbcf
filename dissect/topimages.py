"""Each unit's top images: the store images with the largest per-image maximum of the
unit's activation map, best first, collected during a pass the dissection makes anyway.
Ties go to the lower image index, so the result does not depend on batch size or order.

With ``keep`` the unit maps of each unit's ``keep`` best images are kept too (as the pass
saw them, on the maps' device, in their dtype): the report draws its masks from them
(``topmaps.npy``) instead of running anything again. An image that leaves a unit's
top ``keep`` never comes back, so the maps of the current best are all that is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from broden.dissect.summary import TOPMAPS

__all__ = ["TOPMAPS", "TopImages", "rank_images", "rank_order"]


class TopImages:
    """Running top-``k`` images per unit by per-image maximum activation, with the maps of
    the best ``keep`` (0: none)."""

    def __init__(self, units: int, k: int, keep: int = 0):
        self.k, self.keep = k, min(keep, k)
        self.values = np.zeros((units, 0), np.float64)
        self.indices = np.zeros((units, 0), np.int64)
        self.maps: torch.Tensor | None = None  # (units, ≤ keep, h, w)

    def add(
        self,
        maxima: torch.Tensor | np.ndarray,
        indices: np.ndarray,
        maps: torch.Tensor | None = None,
    ) -> None:
        """``maxima`` (B, U): each image's maximum per unit; ``indices`` (B,) store indices;
        ``maps`` (B, U, h, w): the batch's maps (needed when maps are kept)."""
        m = maxima.detach().double().cpu().numpy() if isinstance(maxima, torch.Tensor) else maxima
        m = np.asarray(m, np.float64)
        had = self.values.shape[1]
        vals = np.concatenate([self.values, m.T], axis=1)
        idx = np.concatenate([self.indices, np.broadcast_to(indices, m.T.shape)], axis=1)
        order = rank_order(vals, idx, self.k)
        self.values = np.take_along_axis(vals, order, axis=1)
        self.indices = np.take_along_axis(idx, order, axis=1)
        if self.keep and maps is not None:
            self._keep_maps(order[:, : self.keep], had, maps)

    def _keep_maps(self, order: np.ndarray, had: int, maps: torch.Tensor) -> None:
        """The maps of ``order`` (positions among the ``had`` kept before, then the batch)."""
        old = self.maps
        if old is None:
            old = maps.new_zeros((maps.shape[1], 0, *maps.shape[2:]))
        # a position below ``had`` ranked in the old top ``keep``, so it is one of old's
        pos = np.where(order < had, order, order - had + old.shape[1])
        both = torch.cat([old, maps.detach().transpose(0, 1)], dim=1)
        rows = torch.arange(both.shape[0], device=both.device)[:, None]
        self.maps = both[rows, torch.as_tensor(pos, device=both.device)]

    def share_maps(
        self, local_indices: np.ndarray, sum_: Callable[[list[torch.Tensor]], None]
    ) -> None:
        """After the ranks' top images were merged (``self.indices`` the merged ones,
        ``local_indices`` this rank's before): every rank's maps of the merged top ``keep``,
        summed over the ranks bit for bit (each image is one rank's, the others add 0)."""
        if self.maps is None:
            return
        mine = self.maps
        want = self.indices[:, : self.keep]
        out = mine.new_zeros((mine.shape[0], want.shape[1], *mine.shape[2:]))
        have = local_indices[:, : mine.shape[1]]
        for u in range(want.shape[0]):  # units × keep: small
            where = {int(i): r for r, i in enumerate(have[u].tolist())}
            for r, i in enumerate(want[u].tolist()):
                if i in where:
                    out[u, r] = mine[u, where[i]]
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[out.element_size()]
        bits = out.contiguous().view(ints)
        sum_([bits])
        self.maps = bits.view(out.dtype)


def rank_order(values: np.ndarray, indices: np.ndarray, k: int) -> np.ndarray:
    """Per row (unit) the positions of the ``k`` best (value, image index) pairs: values
    descending, ties to the lower index."""
    return np.lexsort((indices, -values), axis=-1)[:, :k]


def rank_images(values: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row (unit) the ``k`` best of (value, image index) pairs: values descending,
    ties to the lower index."""
    order = rank_order(values, indices, k)
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(indices, order, axis=1)
