"""The rotation experiment (Bau et al. 2017 §3.2; ``broden dissect --rotate SEED``).

The layer's units are replaced by a rotated basis ``Q f(x)``, Q drawn uniformly from
SO(n) (:func:`random_rotation`), or by the partial rotation ``Q^α`` along the geodesic
from I (:func:`rotation_power`), applied to the channels at every position before
thresholds (:class:`ChannelRotation`). The network's discriminative power is unchanged;
its interpretability is not (the paper: 80 % fewer unique detectors for AlexNet conv5
under a full rotation). :func:`run_rotations` dissects the layers unrotated into
``OUT/<layer>/`` and rotated into ``OUT/rotated/seed<S>-alpha<A>/<layer>/`` (each a
complete, separately cached dissection) and writes ``OUT/<layer>/rotation.csv`` and
``rotation.png`` / ``.svg``.

>>> run_rotation("broden.zarr", "dissect.zoo:resnet18", "layer4", seed=1,
...              alphas=(0.2, 0.6, 1.0), out="out")                   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from broden.dissect.errors import DissectError
from broden.dissect.experiments.common import save_figure
from broden.dissect.results import DissectionResult, layer_dir
from broden.dissect.settings import DissectSettings

if TYPE_CHECKING:
    import torch
    from torch import nn

    from broden.store import BrodenStore

#: folder under OUT that holds the rotated dissections
ROTATED_DIR = "rotated"
_ROTATION_KEY = re.compile(r"channel-rotation:seed=(\d+):alpha=([^:]+):v1")


def random_rotation(n: int, seed: int) -> np.ndarray:
    """A Haar-random rotation in SO(n), float64 n×n, fully determined by ``seed``.

    The QR decomposition of a standard Gaussian matrix (numpy's ``default_rng(seed)``)
    with Q's columns multiplied by the signs of R's diagonal is Haar-distributed on O(n)
    (Mezzadri 2007; the paper cites Diaconis 2005); negating the first row where the
    determinant is −1 maps it onto SO(n), as NetDissect's ``rotate.randomRotation`` did.

    >>> Q = random_rotation(4, seed=0)
    >>> bool(np.allclose(Q @ Q.T, np.eye(4))), round(float(np.linalg.det(Q)), 6)
    (True, 1.0)
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DissectError(f"a rotation needs a positive number of units, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DissectError(f"rotation seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    a = rng.standard_normal((int(n), int(n)))
    q, r = np.linalg.qr(a)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    q = q * signs[None, :]
    if np.linalg.det(q) < 0:
        q[0] = -q[0]
    return q


def _check_rotation(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, np.float64)
    if q.ndim != 2 or q.shape[0] != q.shape[1] or q.shape[0] == 0:
        raise DissectError(f"a rotation is a square n×n matrix, got shape {q.shape}")
    n = q.shape[0]
    err = float(np.abs(q.T @ q - np.eye(n)).max())
    if not err < 1e-6:
        raise DissectError(f"the matrix is not orthogonal (max |QᵀQ - I| = {err:.2g})")
    if np.linalg.det(q) < 0:
        raise DissectError(
            "the matrix has determinant -1 (a reflection): it is not on a geodesic from the "
            "identity, so Q^alpha is not defined; use a rotation (determinant +1)"
        )
    return q


def rotation_power(q: np.ndarray, alpha: float) -> np.ndarray:
    """``Q^α`` for a rotation Q: the point at fraction α of the minimal geodesic from I
    (α = 0) to Q (α = 1); orthogonal with determinant +1 for every α.

    With the real Schur form Q = W T Wᵀ (T block diagonal: 2×2 rotations by θ in (-π, π)
    and 1×1 blocks ±1), Q^α = W B Wᵀ with every 2×2 block's angle scaled to αθ, +1 blocks
    kept, and the −1 eigenvalues (an even number in SO(n)) taken in pairs as rotations by
    π in the plane of their two Schur vectors, scaled to απ. Q^α·Q^β = Q^(α+β).

    >>> Q = random_rotation(5, seed=3)
    >>> bool(np.allclose(rotation_power(Q, 0.5) @ rotation_power(Q, 0.5), Q))
    True
    """
    q = _check_rotation(q)
    a = float(alpha)
    if not math.isfinite(a):
        raise DissectError(f"rotation power alpha must be a finite number, got {alpha!r}")
    n = q.shape[0]
    if a == 0.0:
        return np.eye(n)
    if a == 1.0 or n == 1:
        return q.copy()
    from scipy.linalg import schur

    t, w = schur(q, output="real")
    b = np.zeros((n, n))
    negatives: list[int] = []
    i = 0
    while i < n:
        if i + 1 < n and t[i + 1, i] != 0.0:
            theta = math.atan2(0.5 * (t[i + 1, i] - t[i, i + 1]), 0.5 * (t[i, i] + t[i + 1, i + 1]))
            c, s = math.cos(a * theta), math.sin(a * theta)
            b[i : i + 2, i : i + 2] = [[c, -s], [s, c]]
            i += 2
        else:
            if t[i, i] < 0:
                negatives.append(i)
            else:
                b[i, i] = 1.0
            i += 1
    if len(negatives) % 2:  # cannot happen for det +1 up to rounding; be explicit
        raise DissectError("the rotation has an odd number of eigenvalues -1 (determinant -1)")
    c, s = math.cos(a * math.pi), math.sin(a * math.pi)
    for i, j in zip(negatives[::2], negatives[1::2], strict=True):
        b[i, i], b[i, j], b[j, i], b[j, j] = c, -s, s, c
    return w @ b @ w.T


def parse_rotation_key(key: str) -> tuple[int, float] | None:
    """(seed, alpha) of a channel rotation's ``transform_key``; None for any other key."""
    m = _ROTATION_KEY.fullmatch(key)
    return None if m is None else (int(m.group(1)), float(m.group(2)))


def rotation_key(seed: int, alpha: float) -> str:
    """The ``transform_key`` of a channel rotation (enters the results cache key)."""
    return f"channel-rotation:seed={int(seed)}:alpha={float(alpha)!r}:v1"


class ChannelRotation:
    """A ``unit_transform`` that rotates the channels at every position: for maps
    (B, U, h, w), ``out[:, v] = Σ_u R[v, u] · maps[:, u]`` (the paper's Q·f(x)).

    Give the matrix, or ``seed`` (and ``alpha``) to draw ``Q^alpha`` with
    ``Q = random_rotation(U, seed)`` on the first call, when the layer's width U is known.
    The identity (alpha = 0) returns the maps unchanged.

    >>> rot = ChannelRotation(seed=1, alpha=0.5)                     # doctest: +SKIP
    >>> dissect(store, model, "layer4", out="rot", unit_transform=rot,
    ...         transform_key=rot.key)                                # doctest: +SKIP
    """

    def __init__(
        self, matrix: np.ndarray | None = None, *, seed: int | None = None, alpha: float = 1.0
    ):
        if (matrix is None) == (seed is None):
            raise DissectError("ChannelRotation needs either a matrix or a seed")
        self.seed, self.alpha = seed, float(alpha)
        self.matrix: np.ndarray | None = None
        if matrix is not None:
            m = np.asarray(matrix, np.float64)
            if m.ndim != 2 or m.shape[0] != m.shape[1]:
                raise DissectError(f"a channel rotation is a square matrix, got {m.shape}")
            self.matrix = m
        elif not math.isfinite(self.alpha):
            raise DissectError(f"rotation power alpha must be a finite number, got {alpha!r}")
        self._tensors: dict[tuple[str, Any], torch.Tensor] = {}
        self._identity: bool | None = None

    @property
    def key(self) -> str:
        """The ``transform_key`` naming this rotation (seeded rotations only)."""
        if self.seed is None:
            raise DissectError("a rotation given as a matrix has no key; name it yourself")
        return rotation_key(self.seed, self.alpha)

    def matrix_for(self, units: int) -> np.ndarray:
        """R for a layer of ``units`` channels (drawn on first use for a seeded rotation)."""
        if self.matrix is None:
            assert self.seed is not None
            self.matrix = rotation_power(random_rotation(units, self.seed), self.alpha)
        if self.matrix.shape[0] != units:
            raise DissectError(
                f"the rotation is {self.matrix.shape[0]}×{self.matrix.shape[0]} but the layer "
                f"has {units} units"
            )
        return self.matrix

    def is_identity(self, units: int) -> bool:
        """Whether R is exactly the identity (then the maps pass through unchanged)."""
        m = self.matrix_for(units)
        if self._identity is None:
            self._identity = bool(np.array_equal(m, np.eye(units)))
        return self._identity

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        import torch

        if maps.ndim != 4:
            raise DissectError(f"a channel rotation takes (B, U, h, w) maps, got {maps.shape}")
        units = int(maps.shape[1])
        if self.is_identity(units):
            return maps
        k = (str(maps.device), maps.dtype)
        r = self._tensors.get(k)
        if r is None:
            r = torch.as_tensor(self.matrix_for(units)).to(device=maps.device, dtype=maps.dtype)
            self._tensors[k] = r
        return torch.einsum("vu,buhw->bvhw", r, maps)


def unit_transform_from_key(key: str | None) -> ChannelRotation | None:
    """The unit transform a summary's ``settings.transform`` names (None: none), for
    re-running a model on results made with a rotation (segmentation, report masks)."""
    if key is None:
        return None
    rot = parse_rotation_key(key)
    if rot is None:
        raise DissectError(
            f"these results were made with the unit transform {key!r}, which segment cannot "
            "reproduce (only channel rotations); segment with results made without it"
        )
    return ChannelRotation(seed=rot[0], alpha=rot[1])


def rotation_dir(out: str | os.PathLike[str], seed: int, alpha: float) -> Path:
    """``OUT/rotated/seed<S>-alpha<A>``: the dissect output folder of one rotation."""
    return Path(out) / ROTATED_DIR / f"seed{int(seed)}-alpha{float(alpha)!r}"


@dataclass
class RotationResult:
    """One layer under rotations: the unrotated result, the rotated ones by alpha, and
    the files written (``OUT/<layer>/rotation.csv``, ``rotation.png``/``.svg``)."""

    layer: str
    seed: int
    unrotated: DissectionResult
    rotated: dict[float, DissectionResult]
    csv: Path
    figures: list[Path]

    def rows(self) -> list[dict[str, Any]]:
        """The rows of rotation.csv (unrotated first, then by alpha as given)."""
        base = self.unrotated.unique_detectors
        out = []
        entries: list[tuple[str, float, DissectionResult]] = [("unrotated", 0.0, self.unrotated)]
        entries += [("rotated", a, r) for a, r in self.rotated.items()]
        for basis, alpha, r in entries:
            u = r.unique_detectors
            row: dict[str, Any] = {
                "basis": basis,
                "seed": "" if basis == "unrotated" else self.seed,
                "alpha": alpha,
                "units": r.units,
                "detectors": r.detectors,
                "unique_top_label": u["top_label"],
                "unique_per_category": u["per_category"],
                "top_label_vs_unrotated": u["top_label"] / base["top_label"]
                if base["top_label"]
                else "",
                "per_category_vs_unrotated": u["per_category"] / base["per_category"]
                if base["per_category"]
                else "",
            }
            for cat, pc in r.summary.per_category.items():
                row[f"{cat}_detectors"] = pc.detectors
                row[f"{cat}_unique_per_category"] = pc.unique_per_category
            row["directory"] = str(r.directory)
            out.append(row)
        return out

    def format(self) -> str:
        """One line per basis: unique detectors both ways and the change."""
        lines = []
        for row in self.rows():
            what = (
                f"{self.layer} unrotated"
                if row["basis"] == "unrotated"
                else f"{self.layer} rotated (seed {self.seed}, alpha {row['alpha']:g})"
            )
            line = (
                f"{what}: {row['detectors']} of {row['units']} units are detectors of "
                f"{row['unique_top_label']} unique concepts ({row['unique_per_category']} "
                "counted per category)"
            )
            if row["basis"] == "rotated" and row["top_label_vs_unrotated"] != "":
                line += f"; {row['top_label_vs_unrotated'] - 1:+.0%} unique vs unrotated"
            lines.append(line)
        lines.append(f"rotation table: {self.csv}")
        return "\n".join(lines)


def _write_rotation_files(res: RotationResult) -> None:
    rows = res.rows()
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(res.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        for r in rows:
            w.writerow(
                {
                    k: f"{v:.6f}" if isinstance(v, float) and k != "alpha" else v
                    for k, v in r.items()
                }
            )
    res.figures = _rotation_figure(res, rows, res.csv.with_name("rotation"))


def _rotation_figure(res: RotationResult, rows: list[dict[str, Any]], stem: Path) -> list[Path]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    base, rot = rows[0], sorted(rows[1:], key=lambda r: r["alpha"])
    alphas = [r["alpha"] for r in rot]
    for key, label, color in (
        ("unique_top_label", "unique detectors (top label)", "#1f77b4"),
        ("unique_per_category", "unique detectors (per category)", "#ff7f0e"),
        ("detectors", "detector units", "#7f7f7f"),
    ):
        style = ":" if key == "detectors" else "-"
        ax.plot(alphas, [r[key] for r in rot], style, marker="o", color=color, label=label)
        ax.scatter([0.0], [base[key]], marker="*", s=140, color=color, zorder=3)
        ax.axhline(base[key], color=color, lw=0.8, ls="--", alpha=0.5)
    ax.scatter([], [], marker="*", s=140, color="k", label="unrotated basis (stars, dashed)")
    ax.set_xlabel("rotation power alpha (0: unrotated basis, 1: full random rotation)")
    ax.set_ylabel("count")
    ax.set_xlim(min([0.0, *alphas]) - 0.05, max([1.0, *alphas]) + 0.05)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    t = res.unrotated.summary.settings.iou_threshold
    ax.set_title(
        f"{res.layer}: {res.unrotated.units} units, rotation seed {res.seed}, IoU > {t:g}",
        fontsize=10,
    )
    return save_figure(fig, stem)


def _check_alphas(alphas: Iterable[float]) -> list[float]:
    out: list[float] = []
    for a in alphas:
        try:
            v = float(a)
        except (TypeError, ValueError):
            raise DissectError(f"--alpha {a!r}: not a number") from None
        if not math.isfinite(v):
            raise DissectError(f"--alpha {a!r}: must be a finite number (0 to 1)")
        if v not in out:
            out.append(v)
    if not out:
        raise DissectError("no rotation powers: give at least one --alpha")
    return out


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DissectError(f"--rotate SEED must be a non-negative integer, got {seed!r}")


def _finish(
    layer: str, seed: int, base: DissectionResult, rotated: dict[float, Any]
) -> RotationResult:
    from broden.dissect.distributed import is_main

    res = RotationResult(layer, int(seed), base, rotated, base.directory / "rotation.csv", [])
    if base.summary.settings.distributed is None or is_main():
        _write_rotation_files(res)  # a distributed run's files are rank 0's
    return res


def run_rotations(
    store: BrodenStore | str | os.PathLike[str],
    model: str | nn.Module,
    layers: Sequence[str] | str,
    seed: int,
    alphas: Iterable[float] = (1.0,),
    settings: DissectSettings | None = None,
    *,
    out: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    revision: str | None = None,
) -> dict[str, RotationResult]:
    """The rotation experiment for ``layers`` of ``model``: :func:`broden.dissect.dissect`
    (with ``settings``, ``weights`` and ``revision``) unrotated into ``out`` and, for each
    alpha, with the channels rotated by ``Q^alpha`` (Q = :func:`random_rotation` (U, seed)
    per layer of width U) into :func:`rotation_dir` (out, seed, alpha). Each run is a complete
    dissection cached under its own key (the rotation's seed and alpha are in it), so a
    re-run reuses it. Thresholds are always computed: the rotated units are new units.
    Writes ``out/<layer>/rotation.csv`` and ``rotation.png``/``.svg`` per layer.

    >>> r = run_rotations("broden.zarr", "dissect.zoo:resnet18", ["layer4"], seed=1,
    ...                   alphas=(0.5, 1.0), out="out")                # doctest: +SKIP
    >>> print(r["layer4"].format())                                   # doctest: +SKIP
    """
    from broden.dissect.pipeline import dissect

    _check_seed(seed)
    todo = _check_alphas(alphas)
    names = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
    outp = Path(out)
    for la in names:
        if layer_dir(outp, la).name == ROTATED_DIR:
            raise DissectError(
                f"layer {la!r} would be written to {layer_dir(outp, la)}, the folder that holds "
                "the rotated results; dissect it without --rotate"
            )
    base = dissect(store, model, names, settings, out=outp, weights=weights, revision=revision)
    rotated: dict[str, dict[float, DissectionResult]] = {la: {} for la in names}
    for a in todo:
        res = dissect(
            store,
            model,
            names,
            settings,
            out=rotation_dir(outp, seed, a),
            weights=weights,
            revision=revision,
            unit_transform={la: ChannelRotation(seed=int(seed), alpha=a) for la in names},
            transform_key=rotation_key(seed, a),
        )
        for la in names:
            rotated[la][a] = res[la]
    return {la: _finish(la, seed, base[la], rotated[la]) for la in names}


def run_rotation_activations(
    store: BrodenStore | str | os.PathLike[str],
    activations: Any,
    seed: int,
    alphas: Iterable[float] = (1.0,),
    settings: DissectSettings | None = None,
    *,
    out: str | os.PathLike[str],
    layer: str | None = None,
) -> RotationResult:
    """The rotation experiment on precomputed activations (N×U×h×w, as for
    :func:`broden.dissect.score_activations`): unrotated into ``out``, rotated into
    :func:`rotation_dir` (out, seed, alpha)."""
    from broden.dissect.pipeline import score_activations

    _check_seed(seed)
    todo = _check_alphas(alphas)
    outp = Path(out)
    base = score_activations(store, activations, layer, settings, out=outp)
    if base.directory.name == ROTATED_DIR:
        raise DissectError(
            f"layer {base.layer!r} is written to {base.directory}, the folder that holds the "
            "rotated results; name the layer otherwise (--layer)"
        )
    rotated = {}
    for a in todo:
        rot = ChannelRotation(seed=int(seed), alpha=a)
        rotated[a] = score_activations(
            store,
            activations,
            base.layer,
            settings,
            out=rotation_dir(outp, seed, a),
            unit_transform=rot,
            transform_key=rot.key,
        )
    return _finish(base.layer, seed, base, rotated)


def run_rotation(
    store: BrodenStore | str | os.PathLike[str],
    model: str | nn.Module | None,
    layer: str | None,
    seed: int,
    alphas: Iterable[float] = (1.0,),
    settings: DissectSettings | None = None,
    *,
    out: str | os.PathLike[str],
    activations: Any = None,
    weights: str | os.PathLike[str] | None = None,
) -> RotationResult:
    """The rotation experiment for one layer: of ``model`` (see :func:`run_rotations`),
    or, with ``model=None`` and ``activations``, of precomputed activations (see
    :func:`run_rotation_activations`; ``layer`` names them)."""
    if activations is not None:
        if model is not None:
            raise DissectError("give either a model or activations, not both")
        return run_rotation_activations(
            store, activations, seed, alphas, settings, out=out, layer=layer
        )
    if model is None or not layer:
        raise DissectError("the rotation experiment needs a model and a layer (or activations)")
    return run_rotations(store, model, [layer], seed, alphas, settings, out=out, weights=weights)[
        layer
    ]
