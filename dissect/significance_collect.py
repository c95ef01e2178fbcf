"""The glue between the passes and the significance core (:mod:`broden.dissect.significance`,
:mod:`broden.dissect.significance_image`): one :class:`LayerSignificance` per layer
collects, in the passes the dissection makes anyway, what the tests need, and yields every
(unit, concept)'s raw p-value (``pvalues.npy``).

Pass 1 (:meth:`LayerSignificance.observe`): each image's maximum activation per unit, the
full U × N matrix (float32: 512 units × 63k images is 129 MB of host memory). The pass
that tallies (:meth:`LayerSignificance.add`, after :meth:`broden.dissect.tally.Tally.add`
handed over its live pairs through ``Tally.pair_sink``): per image and unit the active
pixels ``a_i``; per image and concept ``b_i`` and ``q_i``
(:func:`~broden.dissect.significance.concept_pixel_moments` on the pixel layers, L² per
whole-image label); the per-image intersections ``X_i`` as sparse (image, unit, concept,
count), whose sum is the tally's intersection; and each image's whole-image labels.

After the passes (:meth:`LayerSignificance.p_values`): the localisation test for pixel
concepts, the Mann-Whitney test of the maxima for whole-image concepts (a concept is
whole-image when it occurs in the store's whole-image label arrays), combined per concept
(:func:`~broden.dissect.significance.combine_tests`). Under ``torchrun`` the ranks' sums
and maxima are merged exactly (:meth:`LayerSignificance.merge`): each rank puts its
tensors' bits in its own slot of a (world, ...) integer tensor and ``Ranks.sum_`` adds
zeros to them, so every rank gets every rank's values bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from broden.dissect.concepts import ConceptSelection
from broden.dissect.distributed import Ranks
from broden.dissect.significance import (
    LocalisationAccumulator,
    combine_tests,
    concept_pixel_moments,
)
from broden.dissect.significance_image import mann_whitney
from broden.dissect.summary import PVALUES
from broden.dissect.tally import BatchLabels, LabelTables

__all__ = ["PVALUES", "LayerSignificance"]


class LayerSignificance:
    """What one layer's significance tests need, collected batch by batch."""

    def __init__(
        self,
        units: int,
        selection: ConceptSelection,
        tables: LabelTables,
        images: np.ndarray,
        label_size: int,
    ):
        self.units, self.tables, self.L = units, tables, label_size
        self.C = len(selection)
        self.images = np.asarray(images, np.int64)  # every dissected store index, ascending
        self.ids = torch.as_tensor(selection.ids.astype(np.int64), device=tables.device)
        self.maxima = np.zeros((units, len(self.images)), np.float32)
        self.image_labels = np.zeros((len(self.images), 0), np.int64)  # column + 1, 0: none
        self.acc = LocalisationAccumulator(units, self.C, label_size)
        empty = torch.zeros(0, dtype=torch.int64)
        self.acc.add(
            torch.zeros((0, units)),
            torch.zeros((0, self.C)),
            intersection=(empty, empty, empty, empty),
            concept_squares=torch.zeros((0, self.C)),
        )  # starts the sums (a rank may see no image)
        self.pending: tuple[torch.Tensor, ...] | None = None

    def _positions(self, indices: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.images, np.asarray(indices, np.int64))

    def observe(self, maxima: torch.Tensor, indices: np.ndarray) -> None:
        """Pass 1: ``maxima`` (B, U), each image's maximum per unit; ``indices`` (B,)."""
        self.maxima[:, self._positions(indices)] = maxima.float().cpu().numpy().T

    def pairs(
        self, pb: torch.Tensor, pu: torch.Tensor, area: torch.Tensor, keys: torch.Tensor
    ) -> None:
        """``Tally.pair_sink``: the batch's live (image, unit) pairs, their active pixels,
        and ``pair · (C + 1) + column + 1`` of every active pixel's pixel labels."""
        self.pending = (pb, pu, area, keys)

    def add(self, labels: BatchLabels, indices: np.ndarray) -> None:
        """After the tally of a batch (``labels`` of the images ``indices``)."""
        t, C, P, U = self.tables, self.C, self.L * self.L, self.units
        B, dev = labels.size, labels.counts.device
        nc1 = C + 1
        img = t.column[labels.image.long()].long()  # (B, Ki): column + 1, 0: none
        self._image_labels(indices, img.cpu().numpy())
        kp = labels.pixel.shape[1]
        pix = t.column[labels.pixel.long()].long().view(B, P, kp).permute(0, 2, 1)
        b, q = concept_pixel_moments(pix, C)
        base = (torch.arange(B, device=dev) * nc1)[:, None]
        whole = torch.bincount((img + base).flatten(), minlength=B * nc1).view(B, nc1)[:, 1:]
        # m(p) = pixel layers' m + w (the image's slots of c): q = q + 2 w b + w² P
        b, q = b + P * whole, q + 2 * whole * b + P * whole * whole
        A = torch.zeros((B, U), dtype=torch.int64, device=dev)
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        x: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] = (
            empty,
            empty,
            empty,
            empty,
        )
        if self.pending is not None:
            pb, pu, area, keys = self.pending
            A[pb, pu] = area
            n = pb.numel()
            pair = torch.arange(n, device=dev)[:, None] * nc1
            ikeys = (pair + img[pb]).flatten()
            iw = area[:, None].expand(-1, img.shape[1]).flatten()
            every = torch.cat([keys, ikeys])
            weight = torch.cat([torch.ones_like(keys), iw])
            uniq, inv = torch.unique(every, return_inverse=True)
            cnt = torch.zeros(uniq.numel(), dtype=torch.int64, device=dev)
            cnt.index_add_(0, inv, weight)
            keep = ((uniq % nc1) > 0) & (cnt > 0)
            uniq, cnt = uniq[keep], cnt[keep]
            p = uniq // nc1
            x = (pb[p], pu[p], uniq % nc1 - 1, cnt)
        self.acc.add(A, b, intersection=x, concept_squares=q)
        self.pending = None

    def _image_labels(self, indices: np.ndarray, cols: np.ndarray) -> None:
        k = cols.shape[1]
        if k > self.image_labels.shape[1]:
            wider = np.zeros((len(self.images), k), np.int64)
            wider[:, : self.image_labels.shape[1]] = self.image_labels
            self.image_labels = wider
        self.image_labels[self._positions(indices), :k] = cols

    def merge(self, ranks: Ranks) -> None:
        """Every rank's sums, maxima and whole-image labels (collective when distributed)."""
        if ranks.world == 1:
            return
        width = _slots(ranks, torch.tensor([self.image_labels.shape[1]]))
        self._image_labels(self.images[:0], np.zeros((0, int(width.max())), np.int64))
        # each image is one rank's: the others add zeros, so plain sums are exact
        shared = [
            torch.from_numpy(self.image_labels),
            torch.from_numpy(self.maxima).view(torch.int32),
        ]
        ranks.sum_(shared)
        self.image_labels = shared[0].numpy()
        self.maxima = shared[1].view(torch.float32).numpy()
        for name, value in self.acc.sums.items():
            self.acc.sums[name] = _slots(ranks, value.cpu()).sum(dim=0).to(value.device)
        self.acc.images = int(_slots(ranks, torch.tensor([self.acc.images])).sum())

    def p_values(self, intersection: np.ndarray) -> np.ndarray:
        """Units × concepts raw one-sided p-values (NaN: not tested); ``intersection`` is the
        tally's, checked against the per-image intersections' sum."""
        loc = self.acc.result(intersection)
        cols = np.unique(self.image_labels[self.image_labels > 0]) - 1
        image_level = np.zeros(self.C, bool)
        image_level[cols] = True
        image_p = np.full((self.units, self.C), np.nan)
        if cols.size:
            lab = self.image_labels
            every = np.zeros((len(self.images), self.C + 1), bool)  # by column + 1
            every[np.arange(len(lab))[:, None], lab] = True
            presence = every[:, cols + 1]
            image_p[:, cols] = mann_whitney(self.maxima, presence).p_value
        return combine_tests(loc.p_value, image_p, image_level)


def _slots(ranks: Ranks, value: torch.Tensor) -> torch.Tensor:
    """(world, *value.shape): every rank's ``value`` (any 4- or 8-byte dtype), bit for bit."""
    ints = {4: torch.int32, 8: torch.int64}[value.element_size()]
    slots = torch.zeros((ranks.world, *value.shape), dtype=ints)
    slots[ranks.rank] = value.contiguous().view(ints)
    ranks.sum_([slots])
    return slots.view(value.dtype)
