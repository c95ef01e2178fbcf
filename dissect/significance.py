"""Which detectors to trust: a significance test of every unit's label.

IoU says how well a unit's mask matches a concept; it does not say whether the match could
be chance. This module is the statistics core (no pipeline imports) that answers that, for
every (unit, concept) pair at once, from quantities the tally's streaming pass has.

**Pixel concepts: a localisation test.** In image i (P = L² label pixels) unit u has
``a_i`` active pixels, and concept c has multiplicity ``m_i(p)`` at pixel p: the number of
pixel label layers that label p with c (0, 1, or more where layers overlap). The tally's
intersection is ``X_i = Σ_{p active} m_i(p)`` (a pixel labelled c in two layers counts
twice) and its concept area ``b_i = Σ_p m_i(p)``, which can exceed P. Null hypothesis:
the unit's ``a_i`` active pixels are a uniformly random subset of the P pixels, keeping
``a_i`` and the labels, independently over images. Then ``X_i`` is a sum of ``a_i`` values
drawn without replacement from the population ``{m_i(p)}``, with ``q_i = Σ_p m_i(p)²``::

    E[X_i]   = a_i b_i / P
    Var[X_i] = a_i (P - a_i) (P q_i - b_i²) / (P² (P - 1))

For 0/1 multiplicities (``q_i = b_i``: no pixel carries c twice) this is the
hypergeometric ``a_i b_i (P - a_i)(P - b_i) / (P² (P - 1))``. Pass ``q_i``
(:func:`concept_pixel_moments`) whenever layers can overlap: assuming ``q_i = b_i``
underestimates the variance there, and counts ``b_i > P`` are refused without it.
A whole-image label counts ``m_i(p) = 1`` everywhere (``b_i = q_i = P``), which adds
nothing to the variance: whole-image concepts are not testable here (see
:mod:`broden.dissect.significance_image`). Summed over images, ``I = Σ X_i`` has
``E = Σ E[X_i]`` and ``V_hyp = Σ Var[X_i]``, accumulated per batch with matrix products
(A: B × U active counts, Bc: B × C concept counts, Q: B × C squares)::

    E     += Aᵀ Bc / P
    V_hyp += [A ∘ (P - A)]ᵀ [P Q - Bc ∘ Bc] / (P² (P - 1))

**Spatially correlated maps.** Real activation masks and concept masks are blobs, not
scattered pixels: two unrelated blobs either miss or overlap by a lot, so ``Var[X_i]`` is
several times ``V_hyp`` (with 16 × 16 random blobs the hypergeometric z of unrelated masks
has a standard deviation near 4, and 30-40 % of them pass p < 0.05). When the per-image
intersections ``X_i`` are given to :meth:`LocalisationAccumulator.add`, the accumulator
also keeps the empirical (sandwich) variance ``V_emp = Σ (X_i - E[X_i])²``, which is
unbiased for ``Σ Var[X_i]`` whatever the dependence of pixels within an image, and is
accumulated as ``Σ X_i² - 2 Σ X_i e_i + Σ e_i²`` (``e_i = E[X_i]``, the last term
``(A∘A)ᵀ (Bc∘Bc) / P²``). The test then uses ``V = max(V_hyp, V_emp)``.

**The z-score and the p-value.** ``z = (I - E) / √V``; the one-sided (upper tail)
p-value is the normal approximation with a continuity correction,
``p = Φ̄((I - E - ½) / √V)`` (``scipy.special.ndtr``). The approximation is poor when
few images carry both the concept and an active unit, or the expected counts are tiny (a
sum of a few skewed terms: its upper tail is heavier than normal); such pairs are *not
tested* (p = NaN, ``tested`` False): ``V_hyp < min_variance`` (default 2 pixels²) or
fewer than ``min_images`` (default 5) informative images (``0 < a_i < P`` and
``P q_i > b_i²``). With ``V_emp`` the statistic is self-normalised: by Cauchy-Schwarz
``z ≤ √n`` for n images with ``X_i ≠ e_i``, so a concept seen in few images cannot be
very significant (a perfect detector over 30 images gets p ≈ 2e-8 at best). What the
null does not model: position. A unit that fires at the top of every image overlaps
"sky" more than uniformly placed pixels would, and the test counts that as localisation
(with edge-clipped random blobs, unrelated masks pass p < 0.05 at about 5 % instead of
3.5 % on a torus).

**Multiple testing.** A unit is tested against every testable concept; p-values are
adjusted per unit across its tested concepts (NaN entries are not tests and are not
counted): Benjamini-Hochberg by default (controls the false discovery rate among a
unit's concepts, and under the null for all of them the chance that any is significant
at α), Holm optionally (family-wise error). The unit's label is *significant* when its
adjusted p ≤ α (default 0.05); :func:`label_significance` gives the ``p_value`` and
``significant`` columns of ``units.csv``.

**Wiring into the tally** (a later change): ``a`` is the per-pair ``area`` of
:meth:`broden.dissect.tally.Tally.add`; ``b`` is ``BatchLabels.counts`` (which counts L²
per whole-image label) at the selected columns; ``q`` from :func:`concept_pixel_moments`
on the pixel layers, plus P per whole-image label (a layer of c everywhere; Broden's
concepts are either pixel or whole-image, never both); the per-image ``X_i`` as sparse
``(image, unit, concept, count)`` from the tally's bincount with the image index in the
key (whole-image labels: the pair's area), so that their sum is the tally's intersection.

Accumulation is float64 on the device of the first batch (CPU for numpy; MPS has no
float64, so CPU there): sums of products in another batch split or order agree to
rounding (~1e-15 relative per operation). The accumulators of distributed ranks merge by
summing their sums (:meth:`LocalisationAccumulator.merge`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.special import ndtr

Array = np.ndarray | torch.Tensor
Variance = Literal["auto", "hypergeometric", "empirical", "max"]
Method = Literal["bh", "holm"]
#: the per-(unit, concept) sums the accumulator keeps; ``_PER_IMAGE`` need the X_i
_SUMS = ("expected", "var_hyp", "informative", "sum_ee")
_PER_IMAGE = ("observed", "sum_xx", "sum_xe")


def _as_float64(x: Array, device: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device, dtype=torch.float64)


def _as_index(x: Array, device: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device, dtype=torch.int64)


def _numpy(x: Array | float) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def hypergeometric_moments(
    active: Array | float,
    concept: Array | float,
    pixels: int,
    concept_squares: Array | float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Null mean and variance of one image's intersection (elementwise, broadcasting):
    ``a b / P`` and ``a (P - a)(P q - b²) / (P² (P - 1))`` with ``q = b`` when
    ``concept_squares`` is None (0/1 multiplicities: the hypergeometric).
    Example: ``hypergeometric_moments(10, 64, 256)`` is ``(2.5, 1.8088...)``.
    """
    a = _numpy(active).astype(np.float64)
    b = _numpy(concept).astype(np.float64)
    q = b if concept_squares is None else _numpy(concept_squares).astype(np.float64)
    P = float(pixels)
    mean = a * b / P
    var = a * (P - a) * (P * q - b * b) / (P * P * (P - 1))
    return mean, var


def concept_pixel_moments(labels: Array, concepts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and concept, ``b = Σ_p m(p)`` and ``q = Σ_p m(p)²`` (int64, B × C), with
    ``m(p)`` the number of layers labelling pixel p with the concept.

    ``labels``: (B, K, ...) integers, layer k's label of each pixel, ``0`` = no label and
    concept column c stored as ``c + 1`` (the tally's keys). Uses
    ``q = b + 2 Σ_{k<k'} #{p : label_k(p) = label_k'(p) = c}`` (K² / 2 bincounts).
    """
    lab = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    lab = lab.long().reshape(lab.shape[0], lab.shape[1], -1)  # (B, K, P)
    B, K, _ = lab.shape
    n = concepts + 1
    base = (torch.arange(B, device=lab.device) * n)[:, None]

    def count(values: torch.Tensor) -> torch.Tensor:  # (B, P) → (B, C), label 0 dropped
        keys = (values + base).flatten()
        return torch.bincount(keys, minlength=B * n).view(B, n)[:, 1:]

    b = torch.zeros((B, concepts), dtype=torch.int64, device=lab.device)
    pairs = torch.zeros_like(b)
    for k in range(K):
        b += count(lab[:, k])
    for k in range(K):
        for k2 in range(k + 1, K):
            pairs += count(torch.where(lab[:, k] == lab[:, k2], lab[:, k], 0))
    return b, b + 2 * pairs


@dataclass
class LocalisationTest:
    """Per (unit, concept), U × C: ``intersection`` I, ``expected`` E, ``variance`` (the V
    used), ``variance_hypergeometric``, ``z`` = (I - E)/√V, ``p_value`` (one-sided, with
    continuity correction; NaN where not tested), ``tested``."""

    intersection: np.ndarray
    expected: np.ndarray
    variance: np.ndarray
    variance_hypergeometric: np.ndarray
    z: np.ndarray
    p_value: np.ndarray
    tested: np.ndarray


class LocalisationAccumulator:
    """The localisation test's sums over images, batch by batch (module docstring).
    Example::

        acc = LocalisationAccumulator(units=512, concepts=1198, label_size=112)
        for a, b, q, x in batches:  # (B, U), (B, C), (B, C), (B, U, C) or sparse
            acc.add(a, b, intersection=x, concept_squares=q)
        test = acc.result()  # test.p_value: U × C, NaN where not tested
    """

    def __init__(
        self, units: int, concepts: int, label_size: int, device: torch.device | None = None
    ):
        self.units, self.concepts, self.pixels = units, concepts, label_size * label_size
        self.label_size = label_size
        self.images = 0
        self.per_image: bool | None = None  # decided by the first batch
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}

    def _start(self, device: torch.device) -> None:
        if self.device is None:
            self.device = torch.device("cpu") if device.type == "mps" else device
        shape = (self.units, self.concepts)
        names = _SUMS + (_PER_IMAGE if self.per_image else ())
        self.sums = {k: torch.zeros(shape, dtype=torch.float64, device=self.device) for k in names}

    def add(
        self,
        active_counts: Array,
        concept_counts: Array,
        intersection: Array | tuple[Array, Array, Array, Array] | None = None,
        concept_squares: Array | None = None,
    ) -> None:
        """Add a batch of B images: ``active_counts`` (B, U) active pixels per image and
        unit, ``concept_counts`` (B, C) ``b_i``, ``concept_squares`` (B, C) ``q_i`` (None:
        ``q_i = b_i``, which needs ``b_i ≤ P``), and optionally the per-image
        intersections ``X_i``: dense (B, U, C) or sparse ``(image, unit, concept, count)``
        vectors, one entry per nonzero triple (image indexed within the batch). Give them
        for every batch or for none."""
        dev = active_counts.device if isinstance(active_counts, torch.Tensor) else None
        if self.per_image is None:
            self.per_image = intersection is not None
            self._start(dev or torch.device("cpu"))
        elif self.per_image != (intersection is not None):
            raise ValueError(
                "per-image intersections were given for "
                + ("earlier batches but not this one" if self.per_image else "this batch only")
            )
        assert self.device is not None
        P = float(self.pixels)
        A = _as_float64(active_counts, self.device)
        Bc = _as_float64(concept_counts, self.device)
        if A.ndim != 2 or A.shape[1] != self.units or Bc.shape != (A.shape[0], self.concepts):
            raise ValueError(
                f"expected active counts (B, {self.units}) and concept counts "
                f"(B, {self.concepts}), got {tuple(A.shape)} and {tuple(Bc.shape)}"
            )
        if concept_squares is None:
            if bool((Bc > P).any()):
                raise ValueError(
                    f"concept counts above P = {self.pixels} (a concept in several layers): "
                    "pass concept_squares (concept_pixel_moments)"
                )
            Q = Bc
        else:
            Q = _as_float64(concept_squares, self.device)
        spread = P * Q - Bc * Bc  # P² × the population variance of m(p); ≥ 0
        if bool((spread < 0).any()) or bool(((A < 0) | (A > P)).any()):
            raise ValueError("inconsistent counts: need 0 ≤ a ≤ P and P·q ≥ b² (Cauchy-Schwarz)")
        s = self.sums
        s["expected"] += A.T @ Bc / P
        s["var_hyp"] += (A * (P - A)).T @ spread / (P * P * (P - 1))
        s["informative"] += ((A > 0) & (A < P)).double().T @ (spread > 0).double()
        s["sum_ee"] += (A * A).T @ (Bc * Bc) / (P * P)
        if intersection is not None:
            self._add_per_image(A, Bc, intersection)
        self.images += int(A.shape[0])

    def _add_per_image(
        self, A: torch.Tensor, Bc: torch.Tensor, x: Array | tuple[Array, Array, Array, Array]
    ) -> None:
        s, P, dev = self.sums, float(self.pixels), A.device
        if isinstance(x, tuple):
            img, unit, con = (_as_index(v, dev) for v in x[:3])
            cnt = _as_float64(x[3], dev)
            e = A[img, unit] * Bc[img, con] / P
            for name, values in (("observed", cnt), ("sum_xx", cnt * cnt), ("sum_xe", cnt * e)):
                s[name].index_put_((unit, con), values, accumulate=True)
            return
        X = _as_float64(x, dev)
        if X.shape != (A.shape[0], self.units, self.concepts):
            raise ValueError(
                f"expected intersections (B, {self.units}, {self.concepts}), got {tuple(X.shape)}"
            )
        s["observed"] += X.sum(dim=0)
        s["sum_xx"] += (X * X).sum(dim=0)
        s["sum_xe"] += torch.einsum("iuc,iu,ic->uc", X, A, Bc) / P

    def merge(self, other: LocalisationAccumulator) -> None:
        """Add another accumulator's sums (another rank's images) into this one."""
        if (other.units, other.concepts, other.pixels) != (self.units, self.concepts, self.pixels):
            raise ValueError("cannot merge accumulators of different units, concepts or size")
        if other.per_image is None:
            return
        if self.per_image is None:
            self.per_image = other.per_image
            self._start(other.device or torch.device("cpu"))
        if self.per_image != other.per_image:
            raise ValueError("cannot merge an accumulator with per-image sums and one without")
        for k, v in other.sums.items():
            self.sums[k] += v.to(self.sums[k].device)
        self.images += other.images

    def result(
        self,
        intersection: Array | None = None,
        *,
        variance: Variance = "auto",
        min_variance: float = 2.0,
        min_images: int = 5,
    ) -> LocalisationTest:
        """The test for every (unit, concept). ``intersection`` (U × C, the tally's) may be
        omitted when per-image intersections were added (then they must agree).
        ``variance``: ``hypergeometric``, ``empirical``, ``max`` (needs per-image
        intersections), ``auto`` (``max`` when available, else ``hypergeometric``)."""
        if self.per_image is None:
            raise ValueError("no batches were added")
        s = {k: _numpy(v) for k, v in self.sums.items()}
        if intersection is None:
            if not self.per_image:
                raise ValueError("pass the intersection: no per-image intersections were added")
            inter = s["observed"]
        else:
            inter = np.asarray(_numpy(intersection), np.float64)
            if inter.shape != (self.units, self.concepts):
                raise ValueError(f"expected intersection {(self.units, self.concepts)}")
            if self.per_image and not np.allclose(inter, s["observed"], rtol=1e-9, atol=0.5):
                raise ValueError("the intersection differs from the per-image intersections' sum")
        vh = s["var_hyp"]
        if variance == "auto":
            variance = "max" if self.per_image else "hypergeometric"
        if variance == "hypergeometric":
            v = vh
        elif not self.per_image:
            raise ValueError(f"variance={variance!r} needs per-image intersections")
        else:
            emp = np.maximum(s["sum_xx"] - 2 * s["sum_xe"] + s["sum_ee"], 0.0)
            v = emp if variance == "empirical" else np.maximum(vh, emp)
        tested = (vh >= min_variance) & (s["informative"] >= min_images) & (v > 0)
        diff = inter - s["expected"]
        sd = np.sqrt(np.where(tested, v, 1.0))
        z = np.where(tested, diff / sd, np.nan)
        p = np.where(tested, ndtr(-(diff - 0.5) / sd), np.nan)
        return LocalisationTest(inter, s["expected"], v, vh, z, p, tested)


def adjust_p_values(p_values: Array, method: Method = "bh") -> np.ndarray:
    """Adjusted p-values per row (a unit's concepts); NaN entries are not tests: they stay
    NaN and do not count in m, the row's number of tests. With the row's p sorted
    ascending, ``p_(1) ≤ … ≤ p_(m)``:

    ``bh`` (Benjamini-Hochberg): ``p̃_(k) = min_{j ≥ k} min(1, m p_(j) / j)``;
    ``holm``: ``p̃_(k) = max_{j ≤ k} min(1, (m - j + 1) p_(j))``.
    Both are monotone in p and ≤ 1; a test is rejected at α when ``p̃ ≤ α``.
    """
    p = np.array(_numpy(p_values), np.float64, ndmin=2)
    if method not in ("bh", "holm"):
        raise ValueError(f"unknown correction {method!r}: expected 'bh' or 'holm'")
    order = np.argsort(np.where(np.isnan(p), np.inf, p), axis=1, kind="stable")
    ps = np.take_along_axis(p, order, axis=1)  # NaN last
    m = (~np.isnan(p)).sum(axis=1, keepdims=True).astype(np.float64)
    j = np.arange(1, p.shape[1] + 1, dtype=np.float64)[None, :]
    if method == "bh":
        raw = np.where(np.isnan(ps), np.inf, m * ps / j)
        adj = np.minimum.accumulate(raw[:, ::-1], axis=1)[:, ::-1]
    else:
        raw = np.where(np.isnan(ps), -np.inf, (m - j + 1) * ps)
        adj = np.maximum.accumulate(raw, axis=1)
    adj = np.where(np.isnan(ps), np.nan, np.minimum(adj, 1.0))
    out = np.empty_like(p)
    np.put_along_axis(out, order, adj, axis=1)
    return out.reshape(np.shape(_numpy(p_values)))


def combine_tests(localisation_p: Array, image_p: Array, image_level: Array) -> np.ndarray:
    """U × C raw p-values, each concept from its test: ``image_p`` (the image-level test)
    where ``image_level[c]`` (whole-image concepts: scenes, textures), else
    ``localisation_p``."""
    mask = np.asarray(_numpy(image_level), bool)[None, :]
    return np.where(mask, _numpy(image_p), _numpy(localisation_p)).astype(np.float64)


@dataclass
class LabelSignificance:
    """Per unit: ``p_value`` (the label's adjusted p; 1.0 where the unit has no label or
    the label was not tested), ``significant`` (``p_value ≤ alpha``), ``tested``."""

    p_value: np.ndarray
    significant: np.ndarray
    tested: np.ndarray


def label_significance(
    p_values: Array, label: Array, *, alpha: float = 0.05, method: Method = "bh"
) -> LabelSignificance:
    """Whether each unit's label passes: ``p_values`` U × C raw (NaN: not tested), adjusted
    per unit by ``method`` (:func:`adjust_p_values`); ``label`` (U,) concept column per unit,
    -1 for none (:class:`broden.dissect.scoring.Scores` ``label``). Significant: the
    label's adjusted p ≤ ``alpha``."""
    adj = adjust_p_values(p_values, method)
    lab = np.asarray(_numpy(label), np.int64)
    if lab.shape != (adj.shape[0],):
        raise ValueError(f"expected one label per unit ({adj.shape[0]}), got {lab.shape}")
    has = lab >= 0
    picked = adj[np.arange(lab.size), np.where(has, lab, 0)]
    tested = has & ~np.isnan(picked)
    p = np.where(tested, picked, 1.0)
    return LabelSignificance(p, tested & (p <= alpha), tested)
