"""Comparisons (``broden compare``, :func:`compare`): the detector numbers of several
dissected layers and/or models side by side: unique detectors counted both ways
(``top_label``, ``per_category``) and the share of units per category (the fraction of
units whose best label is a detector of that category), as ``comparison.csv`` and a
figure (``comparison.png`` / ``.svg``). This is the paper's "which visual properties does
a network trained on task X emphasise, layer by layer". Results made with different
stores, concept sets or settings can be compared, but a warning and the ``differs``
column say so.

>>> compare(["out/layer3", "places=out_places/layer3"], "cmp")       # doctest: +SKIP
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from broden.adapters.categories import category_colors, ordered_categories
from broden.dissect.errors import DissectError
from broden.dissect.experiments.common import ExperimentWarning, save_figure
from broden.dissect.experiments.rotation import parse_rotation_key
from broden.dissect.results import check_out, layer_dirs
from broden.dissect.summary import CategoryDetectors, Detectors, LayerSummary, ModelRecord


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
        rot = parse_rotation_key(transform)
        if rot is not None:
            label += f" (rotated: seed {rot[0]}, alpha {rot[1]:g})"
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
    outdir = check_out(out)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DissectError(f"--out {outdir}: cannot create the folder ({e.strerror})") from None
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
    return save_figure(fig, stem)
