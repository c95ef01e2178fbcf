"""Per-unit activation thresholds: the top ``quantile`` of each unit's values over every
image and every position, at the layer's own resolution, computed exactly.

Two conventions (DESIGN.md §5):

``exact`` (default)
    ``numpy.quantile(values, 1 - quantile)`` with linear interpolation (Hyndman & Fan
    method 7): with the n values sorted ascending, ``v = (n - 1)(1 - q)``,
    ``T = x[⌊v⌋] + (v - ⌊v⌋)(x[⌊v⌋ + 1] - x[⌊v⌋])``.
``ndl``
    NetDissect-Lite's readout, without its sketch: the 1000-point readout
    ``linspace(0, 1, 1000)`` at index ``int(1000 (1 - q) - 1)`` (994 for q = 0.005, level
    994/999), interpolated linearly over the plotting positions ``(k - ½)/n`` of the
    sorted values ``x_k`` (k = 1..n) with the minimum at 0 and the maximum at 1.

Both depend only on the largest few values of each unit (0.5 % of them plus one), so a
:class:`StreamingTopK` keeps exactly those: each batch is filtered by the current k-th
largest value before it is merged, and merges happen only when enough candidates have
piled up, so the cost per batch is one comparison over the batch. Memory is
``units × k`` values (k ≈ quantile · images · h · w), e.g. 15.5 k values per unit for
ResNet-18 layer4 over the 63,305 images of Broden. Thresholds are float64, computed from
the exact values converted to float64; the result does not depend on batch size, image
order or device.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from broden.dissect.errors import DissectError

QuantileMethod = Literal["exact", "ndl"]
METHODS: tuple[str, ...] = ("exact", "ndl")


def ndl_level(quantile: float) -> float:
    """The level NetDissect-Lite reads out: ``linspace(0, 1, 1000)[int(1000(1-q) - 1)]``."""
    index = int(1000 * (1 - quantile) - 1)
    if not 0 <= index < 1000:
        raise DissectError(f"quantile {quantile} is outside NetDissect-Lite's readout (0, 1]")
    return float(np.linspace(0.0, 1.0, 1000)[index])


def values_needed(n: int, quantile: float, method: str) -> int:
    """How many of the largest values of ``n`` the threshold depends on (at least 1)."""
    if n < 1:
        raise DissectError("no activation values to compute thresholds from")
    if method == "exact":
        lo = math.floor((n - 1) * (1 - quantile))
        return n - lo
    if method == "ndl":
        p = ndl_level(quantile)
        # the segment containing p starts at the largest 0-based i with (i + ½)/n ≤ p;
        # keep one more value below it as a margin against rounding in the comparison
        first = math.floor(p * n - 0.5) - 1
        return n - max(first, 0)
    raise DissectError(f"unknown quantile method {method!r}; use one of {list(METHODS)}")


def _lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """numpy.quantile's interpolation, operation for operation."""
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def threshold_from_top(top: np.ndarray, n: int, quantile: float, method: str) -> np.ndarray:
    """Per-unit thresholds from ``top`` (units × k): each row's k largest of ``n`` values,
    sorted ascending (so ``top[:, j]`` is the value of ascending rank ``n - k + j``)."""
    top = np.asarray(top, dtype=np.float64)
    k = top.shape[1]
    start = n - k  # ascending rank of top[:, 0]
    if method == "exact":
        vi = (n - 1) * (1 - quantile)
        lo = math.floor(vi)
        if lo < start:
            raise ValueError(f"top-{k} of {n} values cannot give the quantile (needs rank {lo})")
        hi = min(lo + 1, n - 1)
        t = vi - lo
        return _lerp(top[:, lo - start], top[:, hi - start], t)
    if method == "ndl":
        p = ndl_level(quantile)
        ranks = np.arange(start, n, dtype=np.float64)
        xp = (ranks + 1 - 0.5) / n
        if start == 0:  # every value is there: the minimum sits at 0
            xp = np.concatenate([[0.0], xp, [1.0]])
            rows = [np.concatenate([[r[0]], r, [r[-1]]]) for r in top]
        else:
            if xp[0] > p:
                raise ValueError(f"top-{k} of {n} values do not reach level {p}")
            xp = np.concatenate([xp, [1.0]])
            rows = [np.concatenate([r, [r[-1]]]) for r in top]
        return np.array([np.interp(p, xp, r) for r in rows], dtype=np.float64)
    raise DissectError(f"unknown quantile method {method!r}; use one of {list(METHODS)}")


class StreamingTopK:
    """The ``k`` largest values of each of ``units`` streams, exactly, on any device.

    >>> s = StreamingTopK(units=2, k=3)
    >>> s.add(torch.tensor([[1., 5., 2.], [0., 1., 9.]]))
    >>> s.add(torch.tensor([[4.], [3.]]))
    >>> s.result().tolist()
    [[2.0, 4.0, 5.0], [1.0, 3.0, 9.0]]
    """

    def __init__(
        self,
        units: int,
        k: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.units, self.k = units, k
        self.top = torch.full((units, k), -math.inf, device=device, dtype=dtype)
        self.kth = self.top[:, -1].clone()  # values must exceed this to matter
        self.pending: list[torch.Tensor] = []
        self.pending_cols = 0
        self.seen = 0

    def add(self, values: torch.Tensor) -> None:
        """Add ``values`` (units × m): one batch of every unit's values."""
        if values.dtype != self.top.dtype:
            values = values.to(self.top.dtype)
        self.seen += values.shape[1]
        passing = (values > self.kth[:, None]).sum(dim=1)
        m = int(passing.max()) if passing.numel() else 0
        if m == 0:
            return
        if m < values.shape[1]:
            # a unit with fewer than m candidates contributes some of its other values too:
            # harmless, they are real values of that unit and the top-k of any superset of
            # the true top-k is the true top-k
            values = values.topk(m, dim=1, sorted=False).values
        self.pending.append(values)
        self.pending_cols += values.shape[1]
        if self.pending_cols >= self.k:
            self._merge()

    def _merge(self) -> None:
        if not self.pending:
            return
        pool = torch.cat([self.top, *self.pending], dim=1)
        self.top = pool.topk(self.k, dim=1, sorted=True).values  # descending
        self.kth = self.top[:, -1].clone()
        self.pending, self.pending_cols = [], 0

    def result(self) -> np.ndarray:
        """The k largest values of each unit as float64, ascending (units × k)."""
        self._merge()
        return self.top.flip(1).double().cpu().numpy()


def compute_thresholds(top: StreamingTopK, quantile: float, method: str) -> np.ndarray:
    """Thresholds (float64, one per unit) from a filled :class:`StreamingTopK`."""
    return threshold_from_top(top.result(), top.seen, quantile, method)


def validate_quantile(quantile: float, method: str) -> None:
    if not 0.0 < quantile < 1.0:
        raise DissectError(f"--quantile must lie in (0, 1), got {quantile}")
    if method not in METHODS:
        raise DissectError(f"unknown --quantile-method {method!r}; use one of {list(METHODS)}")
    if method == "ndl":
        ndl_level(quantile)


def load_thresholds(path: str, units: int | None = None) -> np.ndarray:
    """Per-unit thresholds from a .npy file (checked: 1-D, finite, ``units`` long)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DissectError(f"cannot read thresholds file {path}: {e}") from None
    return check_thresholds(arr, units, str(path))


def check_thresholds(arr: np.ndarray, units: int | None, where: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 1 or arr.dtype.kind not in "fiu":
        raise DissectError(f"{where}: thresholds must be a 1-D numeric array, got {arr.shape}")
    if units is not None and len(arr) != units:
        raise DissectError(f"{where}: {len(arr)} thresholds for a layer of {units} units")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise DissectError(f"{where}: thresholds of units {bad[:10].tolist()} are not finite")
    return arr.astype(np.float64)
