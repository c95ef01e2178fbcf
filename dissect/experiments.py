"""Experiments on top of the dissection engine (DESIGN.md §5): comparing layers and
models, the basis-rotation experiment, and segmenting images with a layer's detectors.

**Comparisons** (:func:`compare`): the detector numbers of several dissected layers
and/or models side by side: unique detectors counted both ways (``top_label``,
``per_category``) and the share of units per category (the fraction of units whose
best label is a detector of that category), as ``comparison.csv`` and a figure
(``comparison.png`` / ``.svg``). This is the paper's "which visual properties does a
network trained on task X emphasise, layer by layer". Results made with different
stores, concept sets or settings can be compared, but a warning and the ``differs``
column say so.

**Rotation** (Bau et al. 2017 §3.2): the layer's units are replaced by a rotated basis
``Q f(x)``, Q drawn uniformly from SO(n) (:func:`random_rotation`), or by the partial
rotation ``Q^α`` along the geodesic from I (:func:`rotation_power`), applied to the
channels at every position before thresholds (:class:`ChannelRotation`). The network's
discriminative power is unchanged; its interpretability is not (the paper: 80 % fewer
unique detectors for AlexNet conv5 under a full rotation). :func:`run_rotations`
dissects the layers unrotated into ``OUT/<layer>/`` and rotated into
``OUT/rotated/seed<S>-alpha<A>/<layer>/`` (each a complete, separately cached
dissection) and writes ``OUT/<layer>/rotation.csv`` and ``rotation.png`` / ``.svg``.

**Segmentation** (TPAMI §3.10; NetDissect-Lite issue #9): :func:`segment` runs the
recorded model on one image, thresholds each detector unit's upsampled map with the
dissection's per-unit threshold, and paints the masks over the image with their concept
labels (higher-IoU units on top).

>>> compare(["out/layer3", "places=out_places/layer3"], "cmp")       # doctest: +SKIP
>>> run_rotation("broden.zarr", "dissect.zoo:resnet18", "layer4", seed=1,
...              alphas=(0.2, 0.6, 1.0), out="out")                   # doctest: +SKIP
>>> segment("street.jpg", "out/layer4", out="street-layer4.png")      # doctest: +SKIP
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from broden.adapters.categories import category_colors, ordered_categories
from broden.dissect.errors import DissectError
from broden.dissect.results import layer_dir
from broden.dissect.summary import (
    SUMMARY,
    CategoryDetectors,
    Detectors,
    LayerSummary,
    ModelRecord,
)

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from torch import nn

    from broden.dissect.results import DissectionResult
    from broden.store import BrodenStore

#: folder under OUT that holds the rotated dissections
ROTATED_DIR = "rotated"
_ROTATION_KEY = re.compile(r"channel-rotation:seed=(\d+):alpha=([^:]+):v1")


class ExperimentWarning(UserWarning):
    """Results that can be compared or drawn, but with a caveat (different stores, ...)."""


# -- reading result folders -------------------------------------------------------------------


def layer_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """The layer folders of a result: ``path`` itself when it holds a ``summary.json``,
    else its sub-folders that do (sorted by name)."""
    p = Path(path)
    if not p.exists():
        raise DissectError(f"{p}: no such results folder")
    if not p.is_dir():
        raise DissectError(f"{p}: not a folder (expected a dissect output or layer folder)")
    if (p / SUMMARY).is_file():
        return [p]
    found = sorted(d for d in p.iterdir() if d.is_dir() and (d / SUMMARY).is_file())
    if not found:
        raise DissectError(
            f"{p}: neither a layer folder (with {SUMMARY}) nor a dissect output folder "
            "holding layer folders"
        )
    return found


# -- comparisons ------------------------------------------------------------------------------


@dataclass
class Series:
    """One dissected layer in a comparison (one bar group, one CSV row)."""

    label: str
    directory: Path
    model: str
    layer: str
    units: int
    detectors: int
    unique_top_label: int
    unique_per_category: int
    per_category: dict[str, CategoryDetectors]
    iou_threshold: float
    unit_area: str
    store_fingerprint: str
    store_path: str
    concepts: str
    transform: str = ""
    differs: list[str] = field(default_factory=list)

    def count(self, category: str) -> int | None:
        """Units whose best label is a detector of ``category`` (None: not in the concepts)."""
        c = self.per_category.get(category)
        return None if c is None else c.detectors

    def share(self, category: str) -> float | None:
        """``count(category) / units`` (None: the category is not in the concepts)."""
        n = self.count(category)
        return None if n is None else (n / self.units if self.units else 0.0)


@dataclass
class ComparisonResult:
    """What :func:`compare` wrote: ``csv``, ``figures`` (PNG, SVG), per series the
    numbers, and the warnings about series that are not like for like."""

    series: list[Series]
    categories: list[str]
    csv: Path
    figures: list[Path]
    warnings: list[str]

    def format(self) -> str:
        """A text table: series, units, detectors, unique detectors, shares."""
        width = max([6, *(len(s.label) for s in self.series)])
        head = f"{'series':<{width}} {'units':>6} {'det':>5} {'uniq':>5} {'u/cat':>5}"
        head += "".join(f" {c[:8]:>8}" for c in self.categories)
        lines = [head]
        for s in self.series:
            row = (
                f"{s.label:<{width}} {s.units:>6} {s.detectors:>5} {s.unique_top_label:>5} "
                f"{s.unique_per_category:>5}"
            )
            for c in self.categories:
                v = s.share(c)
                row += f" {'-':>8}" if v is None else f" {v:>8.1%}"
            lines.append(row)
        return "\n".join(lines)


def _parse_result_arg(
    arg: str | os.PathLike[str] | tuple[str, str | os.PathLike[str]],
) -> tuple[str | None, Path]:
    """``DIR``, ``NAME=DIR`` or ``(NAME, DIR)``."""
    if isinstance(arg, tuple):
        return str(arg[0]), Path(arg[1])
    text = os.fspath(arg)
    if not Path(text).exists() and "=" in text:
        name, _, path = text.partition("=")
        if name.strip():
            return name.strip(), Path(path)
    return None, Path(text)


def _rescore(directory: Path, summary: LayerSummary, threshold: float) -> Detectors:
    """Detector numbers of a layer at another IoU threshold, from its iou.npy."""
    from broden.dissect.scoring import detector_summary, score

    try:
        iou = np.load(directory / "iou.npy", allow_pickle=False)
        with open(directory / "concepts.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError) as e:
        raise DissectError(f"{directory}: cannot read iou.npy / concepts.csv ({e})") from None
    cats = list(summary.concepts.categories or summary.per_category)
    try:
        concept_category = np.array([cats.index(r["category"]) for r in rows], np.int64)
    except (ValueError, KeyError):
        raise DissectError(
            f"{directory}/concepts.csv: categories do not match the summary"
        ) from None
    if iou.ndim != 2 or iou.shape[1] != len(rows):
        raise DissectError(
            f"{directory}: iou.npy of shape {iou.shape} does not fit concepts.csv ({len(rows)})"
        )
    return Detectors.model_validate(
        detector_summary(
            score(iou, concept_category, len(cats)), [r["name"] for r in rows], cats, threshold
        )
    )


def _series(name: str | None, directory: Path, many: bool, threshold: float | None) -> Series:
    s = LayerSummary.read(directory)
    layer, model, settings = s.layer, s.source, s.settings
    transform = settings.transform or ""
    if name is not None:
        label = f"{name}/{layer}" if many else name
    else:
        label = f"{model}/{layer}"
        m = _ROTATION_KEY.fullmatch(transform)
        if m is not None:
            label += f" (rotated: seed {m.group(1)}, alpha {float(m.group(2)):g})"
        elif transform:
            label += f" ({transform})"
    thr = settings.iou_threshold
    numbers = s.detector_numbers()
    if threshold is not None and threshold != thr:
        if not 0 <= threshold < 1:
            raise DissectError(f"--iou-threshold must lie in [0, 1), got {threshold}")
        numbers = _rescore(directory, s, threshold)
        thr = threshold
    conc, store = s.concepts, s.store
    return Series(
        label=label,
        directory=directory,
        model=model,
        layer=layer,
        units=numbers.units,
        detectors=numbers.detectors,
        unique_top_label=numbers.unique_detectors.top_label,
        unique_per_category=numbers.unique_detectors.per_category,
        per_category=dict(numbers.per_category),
        iou_threshold=thr,
        unit_area=settings.unit_area,
        store_fingerprint=store.fingerprint,
        store_path=store.path,
        concepts=f"{conc.selection} ({conc.count} concepts)",
        transform=transform,
    )


def _differences(series: list[Series], summaries: list[LayerSummary]) -> list[str]:
    """Fill each series' ``differs`` (what is not like the first series); the warnings."""
    if not series:
        return []
    ref, ref_sum = series[0], summaries[0]
    out = []

    def settings(s: LayerSummary) -> tuple[Any, ...]:
        st = s.settings
        return (st.quantile, st.quantile_method, st.thresholds)

    for s, summ in zip(series[1:], summaries[1:], strict=True):
        if s.store_fingerprint != ref.store_fingerprint:
            s.differs.append("store")
        cats, ref_cats = (x.concepts.categories for x in (summ, ref_sum))
        if s.concepts != ref.concepts or cats != ref_cats:
            s.differs.append("concepts")
        if s.unit_area != ref.unit_area:
            s.differs.append("unit_area")
        if s.iou_threshold != ref.iou_threshold:
            s.differs.append("iou_threshold")
        if settings(summ) != settings(ref_sum):
            s.differs.append("quantile")
    what = {
        "store": "stores",
        "concepts": "concept sets",
        "unit_area": "unit-area modes",
        "iou_threshold": "IoU thresholds",
        "quantile": "threshold settings",
    }
    for key, words in what.items():
        odd = [s.label for s in series if key in s.differs]
        if odd:
            if key == "store":
                detail = ", ".join(
                    f"{s.label}: {s.store_path or '?'} ({s.store_fingerprint or '?'})"
                    for s in series
                    if s is ref or key in s.differs
                )
            else:
                detail = f"{ref.label} vs {', '.join(odd)}"
            out.append(
                f"the results were computed with different {words} ({detail}); their numbers "
                "are not directly comparable"
            )
    return out


def compare(
    result_dirs: Sequence[str | os.PathLike[str] | tuple[str, str | os.PathLike[str]]],
    out: str | os.PathLike[str],
    *,
    iou_threshold: float | None = None,
) -> ComparisonResult:
    """Compare dissected layers and/or models; write ``comparison.csv``,
    ``comparison.png`` and ``comparison.svg`` into ``out``.

    Each entry of ``result_dirs`` is a dissect output folder (all its layers are taken)
    or one layer folder, optionally named: ``NAME=DIR`` or ``(NAME, DIR)``. A series is
    labelled ``model/layer`` (the model spec from ``summary.json``; ``NAME/layer``, or
    ``NAME`` for a single layer folder, when named). ``iou_threshold`` re-scores every
    layer from its ``iou.npy`` at that threshold instead of using its summary.

    Series made with different stores, concept sets, unit-area modes, IoU thresholds or
    threshold settings than the first are compared anyway, with an
    :class:`ExperimentWarning` and a ``differs`` column naming what differs.

    >>> r = compare(["out"], "cmp")          # every layer of one run  # doctest: +SKIP
    >>> print(r.format())                                              # doctest: +SKIP
    """
    if not result_dirs:
        raise DissectError("nothing to compare: give at least one result folder")
    series: list[Series] = []
    summaries: list[LayerSummary] = []
    for arg in result_dirs:
        name, path = _parse_result_arg(arg)
        dirs = layer_dirs(path)
        for d in dirs:
            series.append(_series(name, d, len(dirs) > 1, iou_threshold))
            summaries.append(LayerSummary.read(d))
    seen: dict[str, int] = {}
    for s, summ in zip(series, summaries, strict=True):  # unique labels
        if s.label in seen:
            weights = summ.model.weights if isinstance(summ.model, ModelRecord) else None
            alt = f"{s.label} [{Path(weights).name}]" if weights else s.label
            k = 2
            while alt in seen:
                alt = f"{s.label} #{k}"
                k += 1
            s.label = alt
        seen[s.label] = 1
    notes = _differences(series, summaries)
    for n in notes:
        warnings.warn(n, ExperimentWarning, stacklevel=2)
    cats = ordered_categories(c for s in series for c in s.per_category)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    csv_path = outdir / "comparison.csv"
    _write_comparison_csv(csv_path, series, cats)
    figures = _comparison_figure(series, cats, outdir / "comparison", bool(notes))
    return ComparisonResult(series, cats, csv_path, figures, notes)


def _write_comparison_csv(path: Path, series: list[Series], cats: list[str]) -> None:
    header = [
        "series",
        "model",
        "layer",
        "units",
        "detectors",
        "unique_top_label",
        "unique_per_category",
    ]
    for c in cats:
        header += [f"{c}_detectors", f"{c}_share", f"{c}_unique_top_label"]
        header += [f"{c}_unique_per_category"]
    header += [
        "iou_threshold",
        "unit_area",
        "store_fingerprint",
        "store",
        "concepts",
        "transform",
        "differs",
        "directory",
    ]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for s in series:
            row: list[Any] = [
                s.label,
                s.model,
                s.layer,
                s.units,
                s.detectors,
                s.unique_top_label,
                s.unique_per_category,
            ]
            for c in cats:
                pc = s.per_category.get(c)
                if pc is None:
                    row += ["", "", "", ""]
                else:
                    share = s.share(c)
                    row += [
                        pc.detectors,
                        f"{share:.6f}",
                        pc.unique_top_label,
                        pc.unique_per_category,
                    ]
            row += [
                f"{s.iou_threshold:g}",
                s.unit_area,
                s.store_fingerprint,
                s.store_path,
                s.concepts,
                s.transform,
                ";".join(s.differs),
                str(s.directory),
            ]
            w.writerow(row)


def _save(fig: Figure, stem: Path) -> list[Path]:
    """``stem``.png and ``stem``.svg, without time stamps (same input, same bytes)."""
    import matplotlib

    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    with matplotlib.rc_context({"svg.hashsalt": "broden", "svg.fonttype": "none"}):
        fig.savefig(paths[0], dpi=120, metadata={"Software": None})
        fig.savefig(paths[1], metadata={"Date": None, "Creator": None})
    return paths


def _comparison_figure(series: list[Series], cats: list[str], stem: Path, odd: bool) -> list[Path]:
    from matplotlib.figure import Figure

    n = len(series)
    width = max(8.0, 2.0 + 1.1 * n * 2)
    fig = Figure(figsize=(width, 4.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    x = np.arange(n)
    labels = [s.label for s in series]
    b1 = ax1.bar(x - 0.2, [s.unique_top_label for s in series], 0.4, label="top label")
    b2 = ax1.bar(x + 0.2, [s.unique_per_category for s in series], 0.4, label="per category")
    ax1.bar_label(b1, fontsize=8)
    ax1.bar_label(b2, fontsize=8)
    ax1.set_title("unique detectors")
    ax1.set_ylabel("unique concepts detected")
    ax1.legend(fontsize=8)
    bottom = np.zeros(n)
    colors = category_colors(cats)
    for c in cats:
        vals = np.array([s.share(c) or 0.0 for s in series])
        ax2.bar(x, vals, 0.6, bottom=bottom, label=c, color=colors[c])
        bottom += vals
    ax2.set_title("share of units that are detectors, by category")
    ax2.set_ylabel("fraction of units")
    ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in (ax1, ax2):
        ax.set_xticks(x, labels, rotation=25, ha="right", fontsize=8)
    thr = sorted({s.iou_threshold for s in series})
    title = f"IoU > {', '.join(f'{t:g}' for t in thr)}"
    if odd:
        title += " - results from different stores/settings (see comparison.csv)"
    fig.suptitle(title, fontsize=10)
    return _save(fig, stem)


# -- rotations --------------------------------------------------------------------------------


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
    return _save(fig, stem)


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


def _check_rotation_args(seed: int, kwargs: Mapping[str, Any]) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DissectError(f"--rotate SEED must be a non-negative integer, got {seed!r}")
    if kwargs.get("thresholds") is not None:
        raise DissectError(
            "--thresholds cannot be combined with --rotate: the rotated units are new units, "
            "whose thresholds are computed from their own activations"
        )
    for k in ("unit_transform", "transform_key"):
        if kwargs.get(k) is not None:
            raise DissectError(f"a rotation run sets {k} itself; do not pass it")


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
    *,
    out: str | os.PathLike[str],
    **dissect_kwargs: Any,
) -> dict[str, RotationResult]:
    """The rotation experiment for ``layers`` of ``model``: :func:`broden.dissect.dissect`
    unrotated into ``out`` and, for each alpha, with the channels rotated by
    ``Q^alpha`` (Q = :func:`random_rotation` (U, seed) per layer of width U) into
    :func:`rotation_dir` (out, seed, alpha). Each run is a complete dissection cached
    under its own key (the rotation's seed and alpha are in it), so a re-run reuses it.
    Writes ``out/<layer>/rotation.csv`` and ``rotation.png``/``.svg`` per layer.

    ``dissect_kwargs`` are :func:`broden.dissect.dissect`'s (``thresholds`` is refused: the
    rotated units need their own).

    >>> r = run_rotations("broden.zarr", "dissect.zoo:resnet18", ["layer4"], seed=1,
    ...                   alphas=(0.5, 1.0), out="out")                # doctest: +SKIP
    >>> print(r["layer4"].format())                                   # doctest: +SKIP
    """
    from broden.dissect.pipeline import dissect

    _check_rotation_args(seed, dissect_kwargs)
    dissect_kwargs.pop("thresholds", None)
    todo = _check_alphas(alphas)
    names = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
    outp = Path(out)
    for la in names:
        if layer_dir(outp, la).name == ROTATED_DIR:
            raise DissectError(
                f"layer {la!r} would be written to {layer_dir(outp, la)}, the folder that holds "
                "the rotated results; dissect it without --rotate"
            )
    base = dissect(store, model, names, out=outp, **dissect_kwargs)
    rotated: dict[str, dict[float, Any]] = {la: {} for la in names}
    for a in todo:
        res = dissect(
            store,
            model,
            names,
            out=rotation_dir(outp, seed, a),
            unit_transform={la: ChannelRotation(seed=int(seed), alpha=a) for la in names},
            transform_key=rotation_key(seed, a),
            **dissect_kwargs,
        )
        for la in names:
            rotated[la][a] = res[la]
    return {la: _finish(la, seed, base[la], rotated[la]) for la in names}


def run_rotation_activations(
    store: BrodenStore | str | os.PathLike[str],
    activations: Any,
    seed: int,
    alphas: Iterable[float] = (1.0,),
    *,
    out: str | os.PathLike[str],
    layer: str | None = None,
    **score_kwargs: Any,
) -> RotationResult:
    """The rotation experiment on precomputed activations (N×U×h×w, as for
    :func:`broden.dissect.score_activations`, whose keyword arguments ``score_kwargs`` are):
    unrotated into ``out``, rotated into :func:`rotation_dir` (out, seed, alpha)."""
    from broden.dissect.pipeline import score_activations

    _check_rotation_args(seed, score_kwargs)
    score_kwargs.pop("thresholds", None)
    todo = _check_alphas(alphas)
    outp = Path(out)
    base = score_activations(store, activations, out=outp, layer=layer, **score_kwargs)
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
            out=rotation_dir(outp, seed, a),
            layer=base.layer,
            unit_transform=rot,
            transform_key=rot.key,
            **score_kwargs,
        )
    return _finish(base.layer, seed, base, rotated)


def run_rotation(
    store: BrodenStore | str | os.PathLike[str],
    model: str | nn.Module | None,
    layer: str | None,
    seed: int,
    alphas: Iterable[float] = (1.0,),
    *,
    out: str | os.PathLike[str],
    activations: Any = None,
    **dissect_kwargs: Any,
) -> RotationResult:
    """The rotation experiment for one layer: of ``model`` (see :func:`run_rotations`),
    or, with ``model=None`` and ``activations``, of precomputed activations (see
    :func:`run_rotation_activations`; ``layer`` names them)."""
    if activations is not None:
        if model is not None:
            raise DissectError("give either a model or activations, not both")
        return run_rotation_activations(
            store, activations, seed, alphas, out=out, layer=layer, **dissect_kwargs
        )
    if model is None or not layer:
        raise DissectError("the rotation experiment needs a model and a layer (or activations)")
    return run_rotations(store, model, [layer], seed, alphas, out=out, **dissect_kwargs)[layer]


# -- segmentation -----------------------------------------------------------------------------


@dataclass
class Segmentation:
    """Detector units' masks on one image, best IoU first.

    ``image`` (H, W, 3) uint8 as given; ``masks`` (K, H, W) bool; per unit ``units``,
    ``labels``, ``categories``, ``ious``, ``colors`` (RGB); ``top`` (H, W): index into
    the units of the mask drawn on top at each pixel (the unit with the higher IoU; −1:
    none); ``overlay`` (H, W, 3) uint8, the picture written by :meth:`save`.
    """

    layer: str
    image: np.ndarray
    units: np.ndarray
    labels: list[str]
    categories: list[str]
    ious: np.ndarray
    masks: np.ndarray
    colors: list[tuple[int, int, int]]
    top: np.ndarray
    overlay: np.ndarray

    def coverage(self) -> np.ndarray:
        """Fraction of the image each unit's mask covers."""
        if not len(self.units):
            return np.zeros(0)
        return self.masks.reshape(len(self.units), -1).mean(axis=1)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the overlay as a PNG of the image's size."""
        from PIL import Image

        p = Path(path)
        if p.parent and not p.parent.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.overlay).save(p, format="PNG")
        return p

    def format(self) -> str:
        if not len(self.units):
            return f"{self.layer}: no detector units to draw"
        lines = []
        for i, cov in enumerate(self.coverage()):
            lines.append(
                f"unit {int(self.units[i])}: {self.labels[i]} ({self.categories[i]}, IoU "
                f"{self.ious[i]:.3f}) covers {cov:.1%} of the image"
            )
        return "\n".join(lines)


def _results_layer(result_dir: str | os.PathLike[str]) -> Path:
    dirs = layer_dirs(result_dir)
    if len(dirs) > 1:
        raise DissectError(
            f"{result_dir} holds {len(dirs)} layers ({', '.join(d.name for d in dirs)}); "
            "give one layer folder, e.g. --results "
            f"{Path(result_dir) / dirs[0].name}"
        )
    return dirs[0]


def _detector_units(directory: Path, min_iou: float, top: int | None) -> list[dict[str, Any]]:
    try:
        with open(directory / "units.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DissectError(f"{directory}: cannot read units.csv ({e})") from None
    units = []
    for r in rows:
        try:
            iou = float(r["iou"])
            unit = int(r["unit"])
        except (KeyError, ValueError):
            raise DissectError(f"{directory}/units.csv: malformed row {r}") from None
        if iou > min_iou and r.get("label"):
            units.append({"unit": unit, "label": r["label"], "category": r["category"], "iou": iou})
    units.sort(key=lambda d: (-float(d["iou"]), int(d["unit"])))
    return units if top is None else units[:top]


def unit_transform_from_key(key: str | None) -> ChannelRotation | None:
    """The unit transform a summary's ``settings.transform`` names (None: none), for
    re-running a model on results made with a rotation (segmentation, report masks)."""
    if key is None:
        return None
    m = _ROTATION_KEY.fullmatch(key)
    if m is None:
        raise DissectError(
            f"these results were made with the unit transform {key!r}, which segment cannot "
            "reproduce (only channel rotations); segment with results made without it"
        )
    return ChannelRotation(seed=int(m.group(1)), alpha=float(m.group(2)))


def _load_image(
    image: str | os.PathLike[str] | int | np.ndarray,
    store: BrodenStore | str | os.PathLike[str] | None,
    summary: LayerSummary,
) -> tuple[np.ndarray, np.ndarray]:
    """(the image as given, the image at the store's size)."""
    from broden.imaging import resize_image

    size = summary.store.image_size
    st: BrodenStore | None = None
    if store is not None:
        from broden.store import BrodenStore, open_store

        st = store if isinstance(store, BrodenStore) else open_store(Path(store))
        if st.fingerprint() != summary.store.fingerprint:
            warnings.warn(
                f"the store {st.path} is not the one these results were computed on "
                f"({summary.store.path})",
                ExperimentWarning,
                stacklevel=3,
            )
        size = st.image_size
    is_int = isinstance(image, (int, np.integer)) and not isinstance(image, bool)
    digits = isinstance(image, str) and image.strip().isdigit() and not Path(image).exists()
    index = int(image) if is_int or (digits and st is not None) else None  # type: ignore[arg-type]
    if index is not None:
        if st is None:
            raise DissectError(f"image {index}: a store index needs the store (--store)")
        if not 0 <= index < len(st):
            raise DissectError(f"image {index}: the store {st.path} has images 0-{len(st) - 1}")
        img = st.image(index)
    elif isinstance(image, np.ndarray):
        img = image
    else:
        from broden.adapters.base import SampleError
        from broden.adapters.decode import read_image

        path = Path(image)  # type: ignore[arg-type]
        if not path.exists():
            hint = " (a store index needs --store)" if str(image).strip().isdigit() else ""
            raise DissectError(f"image {path}: no such file{hint}")
        if path.is_dir():
            raise DissectError(f"image {path}: a folder, not an image file")
        try:
            img = read_image(path)
        except SampleError as e:
            raise DissectError(f"image {e}") from None
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise DissectError(f"expected an H×W×3 uint8 RGB image, got {img.shape} {img.dtype}")
    return img, resize_image(np.ascontiguousarray(img), size)


def _upsample(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(K, h, w) → (K, H, W) with the tally's bilinear arithmetic (half-pixel centres,
    clamped edges: ``F.interpolate(mode="bilinear", align_corners=False)``)."""
    import torch

    from broden.dissect.tally import bilinear_weights

    r0, r1, _, rl1 = bilinear_weights(maps.shape[1], height)
    c0, c1, _, cl1 = bilinear_weights(maps.shape[2], width)
    dt, dev = maps.dtype, maps.device
    rl1_t = torch.tensor(rl1, dtype=dt, device=dev)
    cl1_t = torch.tensor(cl1, dtype=dt, device=dev)
    cols_a = maps[:, :, torch.as_tensor(c0, device=dev)]
    cols_b = maps[:, :, torch.as_tensor(c1, device=dev)]
    rows = (1 - cl1_t) * cols_a + cl1_t * cols_b
    top = rows[:, torch.as_tensor(r0, device=dev), :]
    bot = rows[:, torch.as_tensor(r1, device=dev), :]
    return (1 - rl1_t)[:, None] * top + rl1_t[:, None] * bot


def _palette(k: int) -> list[tuple[int, int, int]]:
    import colorsys

    base = [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
        (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
        (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
    ]  # fmt: skip
    out = base[:k]
    for i in range(len(out), k):  # golden-angle hues beyond the fixed set
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def _overlay(
    image: np.ndarray,
    masks: np.ndarray,
    top: np.ndarray,
    colors: list[tuple[int, int, int]],
    legend: list[str],
) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    out = image.astype(np.float32)
    if len(colors):
        pal = np.array(colors, np.float32)
        painted = top >= 0
        out[painted] = 0.45 * out[painted] + 0.55 * pal[top[painted]]
        # outline each drawn region in its full color
        edge = np.zeros_like(painted)
        edge[1:, :] |= top[1:, :] != top[:-1, :]
        edge[:-1, :] |= top[1:, :] != top[:-1, :]
        edge[:, 1:] |= top[:, 1:] != top[:, :-1]
        edge[:, :-1] |= top[:, 1:] != top[:, :-1]
        edge &= painted
        out[edge] = pal[top[edge]]
    pic = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    visible = [i for i in range(len(colors)) if masks[i].any()]
    if not visible:
        return np.asarray(pic)
    h, w = image.shape[:2]
    size = max(8, min(h, w) // 28)
    try:
        font: Any = ImageFont.load_default(size=size)
    except (TypeError, OSError, AttributeError):
        font = ImageFont.load_default()
    layer = Image.new("RGBA", pic.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    line = size + max(2, size // 4)
    pad = max(2, size // 3)
    fit = max(1, (h - 2 * pad) // line)
    shown = visible if len(visible) <= fit else visible[: max(1, fit - 1)]
    texts = [legend[i] for i in shown]
    if len(shown) < len(visible):
        texts.append(f"+{len(visible) - len(shown)} more")
    text_w = max(draw.textlength(t, font=font) for t in texts)
    box_w = int(min(w, pad * 3 + size + text_w))
    box_h = int(min(h, pad * 2 + line * len(texts)))
    draw.rectangle([0, 0, box_w, box_h], fill=(0, 0, 0, 150))
    for j, t in enumerate(texts):
        y = pad + j * line
        if j < len(shown):
            draw.rectangle([pad, y, pad + size, y + size], fill=(*colors[shown[j]], 255))
        draw.text((pad * 2 + size, y), t, fill=(255, 255, 255, 255), font=font)
    pic = Image.alpha_composite(pic.convert("RGBA"), layer).convert("RGB")
    return np.asarray(pic)


def segment(
    image: str | os.PathLike[str] | int | np.ndarray,
    result_dir: str | os.PathLike[str],
    *,
    store: BrodenStore | str | os.PathLike[str] | None = None,
    top: int | None = None,
    min_iou: float | None = None,
    model: str | nn.Module | None = None,
    device: str = "auto",
    out: str | os.PathLike[str] | None = None,
) -> Segmentation:
    """Segment ``image`` with the detector units of a dissected layer (TPAMI §3.10).

    ``image`` is a file (any size; resized to the store's image size as the dissection's
    inputs were, bilinear with antialiasing, no crop), an H×W×3 uint8 array, or a store
    image index (with ``store``). The model recorded in ``result_dir``'s summary (spec,
    weights, normalisation, input size, layout; ``model`` overrides the spec, e.g. for
    results of an in-memory module) is run and the layer captured; every detector unit
    (best IoU > ``min_iou``, default the run's IoU threshold; the ``top`` best if given)
    has its map upsampled to the image's size with the engine's bilinear arithmetic and
    thresholded with its ``thresholds.npy`` value. Where masks overlap, the unit with
    the higher IoU is drawn on top. ``out``: also write the overlay PNG there.

    >>> seg = segment("street.jpg", "out/layer4", out="street.png")  # doctest: +SKIP
    >>> seg.labels[:3], seg.masks.shape                               # doctest: +SKIP
    """
    import torch

    from broden.dissect.data import resolve_device
    from broden.dissect.hooks import LayerCapture, to_unit_maps
    from broden.dissect.models import Normalization, load_model, preprocess
    from broden.dissect.tally import threshold_for_dtype

    directory = _results_layer(result_dir)
    summary = LayerSummary.read(directory)
    rec = summary.model
    if not isinstance(rec, ModelRecord):
        what = rec.activations
        raise DissectError(
            f"{directory} holds results of precomputed activations ({what}), not of a model: "
            "segmenting runs the model on the image, so it needs results of "
            "`broden dissect --model ...`"
        )
    if top is not None and top < 1:
        raise DissectError(f"--top must be at least 1, got {top}")
    thr_iou = summary.settings.iou_threshold
    min_iou = thr_iou if min_iou is None else float(min_iou)
    layer = summary.layer
    try:
        thresholds = np.load(directory / "thresholds.npy", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DissectError(f"{directory}: cannot read thresholds.npy ({e})") from None
    picked = _detector_units(directory, min_iou, top)
    transform = unit_transform_from_key(summary.settings.transform)
    original, resized = _load_image(image, store, summary)

    spec = model if model is not None else rec.spec
    if isinstance(spec, str) and spec.startswith("module:"):
        raise DissectError(
            f"{directory} was dissected from an in-memory module ({spec}); pass that module as "
            "segment(..., model=module)"
        )
    weights = rec.weights if model is None or isinstance(model, str) else None
    if weights is not None and not Path(weights).is_file():
        raise DissectError(
            f"the weights the layer was dissected with, {weights}, are not there (paths are "
            "relative to the folder `broden dissect` ran in)"
        )
    loaded = load_model(spec, weights)
    if loaded.fingerprint != rec.fingerprint:
        raise DissectError(
            f"the model loaded from {loaded.spec} (weights {weights}) is not the one that was "
            f"dissected (fingerprint {loaded.fingerprint} vs {rec.fingerprint}): its "
            "thresholds and labels would not apply"
        )
    mean, std = rec.normalize
    norm = Normalization("recorded", mean, std)
    dev = resolve_device(device)
    module = loaded.module.to(dev)
    x = preprocess(torch.from_numpy(np.array(resized[None])).to(dev), norm, rec.input_size)
    if loaded.batch_size is not None and loaded.batch_size > 1:
        x = torch.cat([x, x.expand(loaded.batch_size - 1, *x.shape[1:])])
    with torch.inference_mode(), LayerCapture(module, [layer]) as cap:
        try:
            outs = cap.run(x)
        except DissectError:
            raise
        except Exception as e:
            raise DissectError(f"the model failed on the image ({type(e).__name__}: {e})") from None
        maps = to_unit_maps(outs[layer], layer, rec.layout, rec.prefix_tokens)
        maps = maps[:1]
        if transform is not None:
            maps = transform(maps)
    if maps.shape[1] != len(thresholds):
        raise DissectError(
            f"layer {layer!r} has {maps.shape[1]} units but {directory}/thresholds.npy has "
            f"{len(thresholds)}"
        )
    H, W = original.shape[:2]
    units = np.array([d["unit"] for d in picked], np.int64)
    masks = np.zeros((len(units), H, W), bool)
    if len(units):
        sel = maps[0, torch.as_tensor(units, device=maps.device)]
        thr = threshold_for_dtype(thresholds[units], sel.dtype).to(sel.device)
        step = max(1, (1 << 25) // max(1, H * W))  # bound the float memory
        for a in range(0, len(units), step):
            up = _upsample(sel[a : a + step], H, W)
            masks[a : a + step] = (up > thr[a : a + step, None, None]).cpu().numpy()
    colors = _palette(len(units))
    topmap = np.full((H, W), -1, np.int64)
    for i in range(len(units) - 1, -1, -1):  # lowest IoU first, highest painted last
        topmap[masks[i]] = i
    legend = [f"{d['label']} (unit {d['unit']}, IoU {d['iou']:.2f})" for d in picked]
    seg = Segmentation(
        layer=layer,
        image=original,
        units=units,
        labels=[d["label"] for d in picked],
        categories=[d["category"] for d in picked],
        ious=np.array([d["iou"] for d in picked], np.float64),
        masks=masks,
        colors=colors,
        top=topmap,
        overlay=_overlay(original, masks, topmap, colors, legend),
    )
    if out is not None:
        seg.save(out)
    return seg
