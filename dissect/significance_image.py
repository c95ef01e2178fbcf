"""Whole-image concepts (scenes, textures): does a unit fire more on the images that carry
the concept? An image-level test from per-image activation maxima.

For unit u, let ``x_i`` be its maximum activation in image i (the U × N array the
dissection keeps for top images) and, for concept c, let the N images split into the
``n1`` that carry c and the ``n0 = N - n1`` that do not (N × C presence). The statistic
is the AUC of ``x`` for presence, the Mann-Whitney U scaled to [0, 1]::

    U   = Σ_{i ∈ pos} Σ_{j ∈ neg} ([x_i > x_j] + ½ [x_i = x_j]) = R - n1 (n1 + 1) / 2
    AUC = U / (n1 n0)

with R the sum of the positives' ranks among all N values (ties get their average rank).
Ranks are computed once per unit; R for every concept is one matrix product
``ranks (U × N) @ presence (N × C)``.

Null hypothesis: the maxima are exchangeable with respect to presence (the unit's values
carry no information about the concept). Then ``E[U] = n1 n0 / 2`` and, with tie groups
of sizes t over the unit's N values (one correction per unit),
``Var[U] = n1 n0 / 12 · (N + 1 - Σ (t³ - t) / (N (N - 1)))``. ``z = (U - E[U]) / √Var``;
the one-sided (greater) p-value is the normal approximation with a continuity correction,
``p = Φ̄((U - E[U] - ½) / √Var)``. It is poor for very small groups (a handful of
positives or negatives: the exact distribution is discrete and short-tailed, so the
approximation is conservative at the extremes but coarse); pairs with
``min(n1, n0) < min_images`` (default 5), or with all of the unit's values tied, are not
tested (p = NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtr
from scipy.stats import rankdata


@dataclass
class ImageTest:
    """Per (unit, concept), U × C: ``auc``, ``u_statistic``, ``z``, ``p_value`` (one-sided,
    NaN where not tested), ``tested``; per concept: ``positives`` (n1)."""

    auc: np.ndarray
    u_statistic: np.ndarray
    z: np.ndarray
    p_value: np.ndarray
    tested: np.ndarray
    positives: np.ndarray


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def tie_correction(values: np.ndarray) -> np.ndarray:
    """``Σ (t³ - t)`` over the groups of equal values of each row (U × N → U)."""
    v = np.sort(values, axis=1)
    U, N = v.shape
    starts = np.ones((U, N), bool)
    starts[:, 1:] = v[:, 1:] != v[:, :-1]
    group = np.cumsum(starts, axis=1) - 1 + (np.arange(U) * N)[:, None]
    t = np.bincount(group.ravel(), minlength=U * N).reshape(U, N).astype(np.float64)
    return (t**3 - t).sum(axis=1)


def mann_whitney(
    maxima: np.ndarray | torch.Tensor,
    presence: np.ndarray | torch.Tensor,
    *,
    min_images: int = 5,
) -> ImageTest:
    """The image-level test of every unit against every concept (module docstring).

    ``maxima``: U × N per-image maximum activation of each unit (finite); ``presence``:
    N × C, image i carries concept c. Example::

        test = mann_whitney(maxima, presence)  # test.auc, test.p_value: U × C
    """
    x = _numpy(maxima).astype(np.float64)
    pres = _numpy(presence).astype(bool)
    if x.ndim != 2 or pres.ndim != 2 or pres.shape[0] != x.shape[1]:
        raise ValueError(
            f"expected maxima (U, N) and presence (N, C), got {x.shape} and {pres.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError("maxima must be finite")
    N = x.shape[1]
    ranks = rankdata(x, axis=1)  # average ranks, 1..N
    n1 = pres.sum(axis=0).astype(np.float64)  # (C,)
    n0 = N - n1
    u_stat = ranks @ pres.astype(np.float64) - (n1 * (n1 + 1) / 2)[None, :]
    pairs = (n1 * n0)[None, :]
    ties = tie_correction(x)[:, None] / (N * (N - 1)) if N > 1 else np.zeros((x.shape[0], 1))
    var = pairs / 12 * (N + 1 - ties)
    tested = (np.minimum(n1, n0) >= min_images)[None, :] & (var > 0)
    sd = np.sqrt(np.where(tested, var, 1.0))
    diff = u_stat - pairs / 2
    auc = np.where(pairs > 0, u_stat / np.where(pairs > 0, pairs, 1.0), np.nan)
    z = np.where(tested, diff / sd, np.nan)
    p = np.where(tested, ndtr(-(diff - 0.5) / sd), np.nan)
    return ImageTest(auc, u_stat, z, p, tested, n1.astype(np.int64))
