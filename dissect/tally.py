"""The tally: for every unit and concept, summed over the dataset, the pixel counts that
IoU is made of. All units of a batch at once; no Python loop over units or images.

Per (image, unit) the activation map (h×w) is upsampled to the store's label size L×L
by bilinear interpolation with half-pixel centres and clamped edges (the arithmetic of
``F.interpolate(mode="bilinear", align_corners=False)``) and the unit's mask is the
set of pixels whose upsampled value is strictly above the unit's threshold. Counted:

``intersection[u, c]``
    active pixels of u carrying label c, summed over every pixel label layer of every
    pixel category (a pixel labelled c in two layers counts twice, as NetDissect did),
    plus, for every whole-image label c of an image, all of u's active pixels there.
``unit_area[mode][u, k]``
    u's active pixels, summed over the images that count for category k: ``original``
    (the image has any label, of any layer or array, whose primary category is k),
    ``lite`` (u's active pixels overlap a label of primary category k, or the image has
    a whole-image label of primary category k; NetDissect-Lite), ``plain`` (all images).
``concept_area[c]``
    pixels labelled c over all layers, plus L² per whole-image label c.

Speed: bilinear output is a convex combination of source values, so a pixel can only be
active where the source values it is made from exceed the threshold. First the (image,
unit) pairs whose map maximum is at or below the threshold are dropped (NetDissect-
Lite's skip, for all pairs at once). Then the output pixels of the remaining pairs are
grouped into *cells*, the rectangles of pixels computed from the same 2×2 source values
(at clamped edges, one row or column), and only cells whose source maximum exceeds the
threshold are evaluated (both tests keep a margin of a few float epsilons for
rounding), every pixel with the same expression ``h0·(w0·x00 + w1·x01) + h1·(w0·x10 +
w1·x11)`` as :func:`upsample_reference`. With the top 0.5 % threshold that is a few
percent of the pixels of a few percent of the pairs. The active pixels' labels are
gathered from a pixel-major label array and counted with one ``bincount`` over
(unit, concept) keys. Every step is an elementwise IEEE operation or an integer count, so
the counts are identical for any batch size, image order or device (CPU, CUDA).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from broden.dissect.concepts import ConceptSelection

MODES: tuple[str, ...] = ("original", "lite", "plain")
#: cells evaluated per step (cells × R × R values), to bound memory
_CHUNK_VALUES = 1 << 21


@dataclass
class AxisBands:
    """One axis of the upsampling: output indices grouped by the source values they use.

    Band b covers output indices ``index[b, :n_b]``, which take their values from source
    indices ``src_a[b]`` and ``src_b[b]`` with weights ``lam0``, ``lam1`` (``lam0 = 1 -
    lam1``; for a clamped edge band ``src_b = src_a``). Bands are padded to a common
    length R with weight NaN, so padded values are NaN and never above a threshold.
    """

    index: torch.Tensor  # (nb, R) int64
    lam0: torch.Tensor  # (nb, R)
    lam1: torch.Tensor  # (nb, R)
    src_a: torch.Tensor  # (nb,) int64
    src_b: torch.Tensor  # (nb,) int64

    @property
    def length(self) -> int:
        return int(self.index.shape[1])


def bilinear_weights(
    n_in: int, n_out: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centre bilinear sampling with clamped edges, per output index:
    (i0, i1, lam0, lam1), float64 weights: the rule of ``F.interpolate(align_corners=False)``."""
    scale = n_in / n_out
    src = scale * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam1 = src - i0
    lam0 = 1.0 - lam1
    return i0, i1, lam0, lam1


def axis_bands(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> AxisBands:
    i0, i1, lam0, lam1 = bilinear_weights(n_in, n_out)
    # weights as the activations' dtype: the arithmetic then matches F.interpolate's
    lam1_t = torch.tensor(lam1, dtype=dtype)
    lam0_t = 1 - lam1_t
    bands: list[list[int]] = []
    key_prev = None
    for i in range(n_out):
        key = (int(i0[i]), int(i1[i]), bool(lam1[i] == 0.0))
        if key != key_prev:
            bands.append([])
            key_prev = key
        bands[-1].append(i)
    R = max(len(b) for b in bands)
    nb = len(bands)
    index = torch.zeros((nb, R), dtype=torch.int64)
    l0 = torch.full((nb, R), math.nan, dtype=dtype)
    l1 = torch.full((nb, R), math.nan, dtype=dtype)
    src_a = torch.zeros(nb, dtype=torch.int64)
    src_b = torch.zeros(nb, dtype=torch.int64)
    for b, members in enumerate(bands):
        m = torch.tensor(members)
        index[b, : len(m)] = m
        l0[b, : len(m)] = lam0_t[m]
        l1[b, : len(m)] = lam1_t[m]
        src_a[b] = int(i0[members[0]])
        # the second source row matters only where its weight is non-zero
        src_b[b] = int(i1[members[0]]) if (lam1[members] > 0).any() else int(i0[members[0]])
    return AxisBands(
        index.to(device), l0.to(device), l1.to(device), src_a.to(device), src_b.to(device)
    )


def upsample_reference(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Full upsampling of (n, h, w) maps to (n, size, size) with the tally's arithmetic
    (for tests, top images and masks drawn in reports)."""
    n, h, w = maps.shape
    r0, r1, _, rl1 = bilinear_weights(h, size)
    c0, c1, _, cl1 = bilinear_weights(w, size)
    dev, dt = maps.device, maps.dtype
    rl1_t = torch.tensor(rl1, dtype=dt, device=dev)
    cl1_t = torch.tensor(cl1, dtype=dt, device=dev)
    rl0_t, cl0_t = 1 - rl1_t, 1 - cl1_t
    cols_a = maps[:, :, torch.as_tensor(c0, device=dev)]
    cols_b = maps[:, :, torch.as_tensor(c1, device=dev)]
    rows = cl0_t * cols_a + cl1_t * cols_b  # (n, h, size)
    top = rows[:, torch.as_tensor(r0, device=dev), :]
    bot = rows[:, torch.as_tensor(r1, device=dev), :]
    return rl0_t[:, None] * top + rl1_t[:, None] * bot


def threshold_for_dtype(thresholds: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The largest value of ``dtype`` at or below each threshold: for x of that dtype,
    ``x > result`` exactly when ``x > threshold`` (so float32 maps compare exactly with
    float64 thresholds)."""
    t64 = torch.as_tensor(np.asarray(thresholds, np.float64))
    t = t64.to(dtype)
    over = t.double() > t64
    if over.any():
        t = torch.where(over, torch.nextafter(t, torch.full_like(t, -math.inf)), t)
    return t


@dataclass
class BatchLabels:
    """A batch's labels on the device, with what every layer's tally shares.

    ``pixel``: (B·L·L, Kp) int32 global ids, all pixel categories' layers stacked,
    pixel-major (row b·L² + y·L + x holds every layer's label of that pixel);
    ``image``: (B, Ki) int32 whole-image ids (0 = padding); ``counts``: (B, C + 1) int64
    pixels per global id and image (L² per whole-image label); ``present``: (B, ncat)
    the image has a label of primary category k; ``image_category``: (B, ncat) it has a
    whole-image label of primary category k; ``atoms``: see the field.
    """

    pixel: torch.Tensor
    image: torch.Tensor
    counts: torch.Tensor
    present: torch.Tensor
    image_category: torch.Tensor
    #: with formulas on: (B·L·L,) int64, each pixel's atom of the concept masks
    #: (:mod:`broden.dissect.explain.collect`), pixel-major like ``pixel``
    atoms: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.counts.shape[0])


class LabelTables:
    """The selection's lookup tables on one device."""

    def __init__(self, selection: ConceptSelection, device: torch.device):
        self.device = device
        self.column = torch.as_tensor(selection.column, device=device)
        self.primary = torch.as_tensor(selection.primary, device=device)
        self.ncols = len(selection)
        self.ncat = len(selection.store_categories)
        n_ids = len(selection.column)
        onehot = np.zeros((n_ids, self.ncat + 1), np.float64)
        onehot[np.arange(n_ids), selection.primary] = 1.0
        self.onehot = torch.as_tensor(onehot, device=device)

    def batch(self, pixel: torch.Tensor, image: torch.Tensor, counts: torch.Tensor) -> BatchLabels:
        B = counts.shape[0]
        present = (counts > 0).double() @ self.onehot  # (B, ncat + 1); id 0 → dummy column
        present = present[:, : self.ncat] > 0
        if image.shape[1]:
            img_cat = self.onehot[image.long()].amax(dim=1)[:, : self.ncat] > 0
        else:
            img_cat = torch.zeros((B, self.ncat), dtype=torch.bool, device=self.device)
        return BatchLabels(pixel.reshape(-1, pixel.shape[-1]), image, counts, present, img_cat)


class Tally:
    """Counts of one layer, accumulated batch by batch (see the module docstring)."""

    def __init__(self, units: int, tables: LabelTables, label_size: int):
        self.units = units
        self.tables = tables
        self.L = label_size
        dev = tables.device
        nc1 = tables.ncols + 1
        self.intersection = torch.zeros(units * nc1, dtype=torch.int64, device=dev)
        self.area = {
            m: torch.zeros((units, tables.ncat), dtype=torch.int64, device=dev) for m in MODES
        }
        self.label_counts = torch.zeros(tables.column.shape[0], dtype=torch.int64, device=dev)
        self.images = 0
        self._geometry: dict[tuple[int, int, torch.dtype], tuple[AxisBands, AxisBands]] = {}
        self._offset_cache: dict[tuple[int, int], torch.Tensor] = {}
        #: off by default; when set (formulas), called with the unit and the atom
        #: (``BatchLabels.atoms``) of every active pixel, in chunks; the counts are unchanged
        self.sink: Callable[[torch.Tensor, torch.Tensor], None] | None = None
        #: when set (significance), called once per batch with the live pairs' image and
        #: unit, their active pixels, and ``pair · (C + 1) + column + 1`` of every active
        #: pixel's pixel labels (:mod:`broden.dissect.significance_collect`); counts unchanged
        self.pair_sink: Callable[..., None] | None = None

    def _bands(self, h: int, w: int, dtype: torch.dtype) -> tuple[AxisBands, AxisBands]:
        key = (h, w, dtype)
        if key not in self._geometry:
            dev = self.tables.device
            self._geometry[key] = (
                axis_bands(h, self.L, dtype, dev),
                axis_bands(w, self.L, dtype, dev),
            )
        return self._geometry[key]

    def _offsets(self, rows: AxisBands, cols: AxisBands) -> torch.Tensor:
        """For every cell (band row, band col) and entry (r, c) of its padded block, the
        output pixel's flat index y·L + x."""
        key = (id(rows), id(cols))
        if key not in self._offset_cache:
            off = rows.index[:, None, :, None] * self.L + cols.index[None, :, None, :]
            self._offset_cache[key] = off.reshape(-1).contiguous()
        return self._offset_cache[key]

    def add(self, acts: torch.Tensor, thresholds: torch.Tensor, labels: BatchLabels) -> None:
        """Add one batch: ``acts`` (B, U, h, w) float, ``thresholds`` (U,) of the same dtype
        from :func:`threshold_for_dtype`, ``labels`` of the same B images."""
        B, U, h, w = acts.shape
        t = self.tables
        dev = acts.device
        nc1, ncat, L = t.ncols + 1, t.ncat, self.L
        rows, cols = self._bands(h, w, acts.dtype)
        self.images += B
        self.label_counts += labels.counts.sum(dim=0)
        eps = 8 * torch.finfo(acts.dtype).eps  # rounding margin of the convex-hull tests

        # (image, unit) pairs whose map can exceed the threshold somewhere
        flat = acts.reshape(B * U, h * w)
        lo, hi = torch.aminmax(flat, dim=1)
        thr_pairs = thresholds.repeat(B)
        live = (hi + eps * torch.maximum(hi.abs(), lo.abs())) > thr_pairs
        pairs = live.nonzero().flatten()  # b·U + u
        if pairs.numel() == 0:
            return
        maps = flat.index_select(0, pairs).view(-1, h, w)
        thr_p = thr_pairs.index_select(0, pairs)
        pb, pu = pairs // U, pairs % U

        # every cell's source values: (P, nbh, nbw) each
        ra = maps.index_select(1, rows.src_a)
        rb = maps.index_select(1, rows.src_b)
        x00 = ra.index_select(2, cols.src_a)
        x01 = ra.index_select(2, cols.src_b)
        x10 = rb.index_select(2, cols.src_a)
        x11 = rb.index_select(2, cols.src_b)
        cmax = torch.maximum(torch.maximum(x00, x01), torch.maximum(x10, x11))
        cmin = torch.minimum(torch.minimum(x00, x01), torch.minimum(x10, x11))
        cabs = torch.maximum(cmax.abs(), cmin.abs())
        cells = ((cmax + eps * cabs) > thr_p[:, None, None]).flatten().nonzero().flatten()
        nbh, nbw = x00.shape[1], x00.shape[2]
        x00, x01, x10, x11 = (x.flatten() for x in (x00, x01, x10, x11))

        npairs = pairs.numel()
        area = torch.zeros(npairs, dtype=torch.int64, device=dev)
        touched = torch.zeros(npairs * (ncat + 1), dtype=torch.int64, device=dev)
        RR = rows.length * cols.length
        offsets = self._offsets(rows, cols)  # (nbh·nbw·RR,) pixel index of each cell entry
        step = max(1, _CHUNK_VALUES // RR)
        pair_keys: list[torch.Tensor] = []
        for s in range(0, cells.numel(), step):
            c = cells[s : s + step]
            p = c // (nbh * nbw)
            cpos = c % (nbh * nbw)
            bi, bj = cpos // nbw, cpos % nbw
            v00, v01, v10, v11 = x00[c], x01[c], x10[c], x11[c]
            w0, w1 = cols.lam0[bj], cols.lam1[bj]  # (n, Rc)
            top = w0 * v00[:, None] + w1 * v01[:, None]
            bot = w0 * v10[:, None] + w1 * v11[:, None]
            h0, h1 = rows.lam0[bi], rows.lam1[bi]  # (n, Rr)
            val = h0[:, :, None] * top[:, None, :] + h1[:, :, None] * bot[:, None, :]
            hit = (val > thr_p[p][:, None, None]).flatten().nonzero().flatten()
            if hit.numel() == 0:
                continue
            cell = hit // RR
            pc = p[cell]
            area += torch.bincount(pc, minlength=npairs)
            pix = offsets[cpos[cell] * RR + hit % RR]
            where = pb[pc] * (L * L) + pix
            if self.sink is not None and labels.atoms is not None:
                self.sink(pu[pc], labels.atoms.index_select(0, where))
            lab = labels.pixel.index_select(0, where).long()  # (m, Kp)
            if lab.shape[1] == 0:
                continue
            keys = pu[pc][:, None] * nc1 + t.column[lab]
            self.intersection += torch.bincount(keys.flatten(), minlength=U * nc1)
            if self.pair_sink is not None:
                pair_keys.append((pc[:, None] * nc1 + t.column[lab]).flatten())
            tkeys = pc[:, None] * (ncat + 1) + t.primary[lab]
            touched += torch.bincount(tkeys.flatten(), minlength=touched.numel())

        if self.pair_sink is not None:
            empty = torch.zeros(0, dtype=torch.int64, device=dev)
            self.pair_sink(pb, pu, area, torch.cat(pair_keys) if pair_keys else empty)
        self.area["plain"].index_add_(0, pu, area[:, None].expand(-1, ncat))
        self.area["original"].index_add_(0, pu, area[:, None] * labels.present[pb])
        hits = touched.view(npairs, ncat + 1)[:, :ncat] > 0
        hits |= labels.image_category[pb]
        self.area["lite"].index_add_(0, pu, area[:, None] * hits)

        if labels.image.shape[1]:
            keys = pu[:, None] * nc1 + t.column[labels.image[pb].long()]
            weights = area[:, None].expand_as(keys)
            self.intersection.index_add_(0, keys.flatten(), weights.flatten())

    def counts(self, selection: ConceptSelection) -> dict[str, np.ndarray]:
        """The totals as numpy arrays: ``intersection`` (U × C'), ``concept_area`` (C'),
        ``unit_area_<mode>`` (U × categories of the selection)."""
        nc1 = self.tables.ncols + 1
        inter = self.intersection.view(self.units, nc1)[:, 1:].cpu().numpy()
        concept_area = self.label_counts.cpu().numpy()[selection.ids]
        cols = selection.category_columns
        out = {
            "intersection": inter.astype(np.int64),
            "concept_area": concept_area.astype(np.int64),
        }
        for m in MODES:
            out[f"unit_area_{m}"] = self.area[m].cpu().numpy()[:, cols].astype(np.int64)
        return out
