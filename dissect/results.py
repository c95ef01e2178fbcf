"""The files of a dissected layer (``OUT/<layer>/``), their cache key, and the
:class:`DissectionResult` that the API returns.

Files (DESIGN.md §5):

``units.csv``      unit (from 0), label, category, iou, then ``<category>_label``,
                   ``<category>_iou`` per category, then ``p_value`` (the label's
                   Benjamini-Hochberg adjusted p; empty: no label, not tested, or
                   no ``pvalues.npy``) and ``significant`` (1: p_value ≤ alpha, else 0;
                   empty without ``pvalues.npy``)
``concepts.csv``   id, name, category: the column order of the matrices (no id 0)
``iou.npy``        float64 units × concepts, for the chosen unit-area mode
``counts.npz``     ``intersection`` (units × concepts), ``concept_area``,
                   ``unit_area_original`` / ``_lite`` / ``_plain`` (units × categories),
                   ``categories``, ``concept_ids`` (all int64 / str; no pickles)
``thresholds.npy`` float64 per unit
``pvalues.npy``    float64 units × concepts raw one-sided p-values (NaN: not tested;
                   :mod:`broden.dissect.significance_collect`), written with the counts
``topk.npz``       ``indices`` (units × k store image indices, best first) and ``values``
                   (their per-image maximum activation), k = max(50, top_k)
``summary.json``   settings, fingerprints, cache key, detectors, timings
``tally.csv``      with ``legacy_csv``: NetDissect-Lite's layout
``formulas.json``  with formulas on: each unit's best formula (unit, formula, iou, length;
``formulas.csv``   :mod:`broden.dissect.explain.collect`), the same as a table

Cache: ``summary.json`` holds the key of everything that determines the counts (model
weights, layer, store fingerprint, concept subset, quantile settings or thresholds,
input preparation, unit transform, k). It is deleted before a layer's files are
rewritten and written last, so a directory whose summary holds the current key is
complete. A run whose key matches reuses the counts and only re-scores them (IoU
threshold, unit-area mode, the legacy CSV and ``alpha`` do not change counts). The raw
p-values are saved beside the counts, so a reused layer's significance is computed again
at this run's ``alpha`` for this run's labels; a cached layer written before
``pvalues.npy`` existed is reused with ``p_value`` left empty and a note (``--force``
computes it).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from broden.dissect.concepts import ConceptSelection
from broden.dissect.errors import DissectError
from broden.dissect.explain.formulas import Explanation
from broden.dissect.scoring import Scores, detector_summary, iou_matrix, score
from broden.dissect.summary import PVALUES, SUMMARY, LayerSummary
from broden.removal import store_containing

if TYPE_CHECKING:  # the significance core imports torch; this module must not
    from broden.dissect.significance import LabelSignificance

RESULTS_VERSION = 1
COUNT_FILES = ("counts.npz", "thresholds.npy", "topk.npz")


def cache_key(parts: dict[str, Any]) -> str:
    doc = json.dumps({"results_version": RESULTS_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:24]


def layer_dir(out: Path, layer: str) -> Path:
    """``OUT/<layer>``, with characters that cannot be in a file name replaced."""
    safe = re.sub(r"[^A-Za-z0-9._+=@-]", "_", layer) or "_"
    if safe in (".", ".."):
        safe = safe.replace(".", "_")
    return out / safe


def check_out(out: str | os.PathLike[str]) -> Path:
    """``out`` as a results folder to write (``--out``): a folder, or a path where one can
    be made, that is not a broden store nor inside one (the layer folders would be
    written into the store). :class:`DissectError` naming the path otherwise."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise DissectError(f"--out {p} is a file, not a folder; give a folder for the results")
    store = store_containing(p)
    if store is not None:
        where = "is a broden store" if store == p.resolve() else f"is inside the store {store}"
        raise DissectError(
            f"--out {p} {where}; the results go in a folder of their own, outside any store"
        )
    return p


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def layer_dirs(path: str | os.PathLike[str], itself: bool = True) -> list[Path]:
    """The dissected layer folders of a results folder (``OUT/<layer>/summary.json``), in
    natural name order (layer2 before layer10); with ``itself``, ``path`` alone when it is
    a layer folder. :class:`DissectError` when there are none."""
    p = Path(path)
    if not p.exists():
        raise DissectError(f"{p}: no such folder (expected the --out folder of `broden dissect`)")
    if not p.is_dir():
        raise DissectError(f"{p}: not a folder (expected a dissect output or layer folder)")
    if itself and (p / SUMMARY).is_file():
        return [p]
    found = [d for d in p.iterdir() if d.is_dir() and (d / SUMMARY).is_file()]
    if not found:
        what = "neither a layer folder (with summary.json) nor" if itself else "not"
        raise DissectError(
            f"{p} is not a dissection results folder: {what} a folder of layer folders "
            "(<layer>/summary.json; run `broden dissect STORE --out OUT ...` first and give "
            "its OUT)"
        )
    return sorted(found, key=lambda d: _natural_key(d.name))


@dataclass
class LayerCounts:
    """Everything a pass over the data produces for one layer."""

    counts: dict[str, np.ndarray]  # see counts.npz
    thresholds: np.ndarray
    top_indices: np.ndarray
    top_values: np.ndarray
    shape: tuple[int, int]  # the layer's h, w
    #: units × concepts raw p-values (``pvalues.npy``); None: not available
    p_values: np.ndarray | None = None

    @property
    def units(self) -> int:
        return len(self.thresholds)


@dataclass
class DissectionResult:
    """One dissected layer: its counts, IoU matrix, unit labels and summary, as written to
    ``directory``. ``concepts`` are (id, name, category) in column order."""

    layer: str
    directory: Path
    concepts: list[tuple[int, str, str]]
    categories: list[str]
    iou: np.ndarray
    thresholds: np.ndarray
    counts: dict[str, np.ndarray]
    scores: Scores
    top_indices: np.ndarray
    top_values: np.ndarray
    summary: LayerSummary
    reused: bool = False
    notes: list[str] = field(default_factory=list)
    #: with formulas on: each unit's best formula (``formulas.json``), else None
    formulas: list[Explanation] | None = None
    #: each unit's label's significance (``units.csv``); None without p-values
    significance: LabelSignificance | None = None

    @property
    def units(self) -> int:
        return len(self.thresholds)

    @property
    def detectors(self) -> int:
        return self.summary.detectors

    @property
    def unique_detectors(self) -> dict[str, int]:
        u = self.summary.unique_detectors
        return {"top_label": u.top_label, "per_category": u.per_category}

    def headline(self) -> str:
        t = self.summary.settings.iou_threshold
        u = self.unique_detectors
        return (
            f"{self.layer}: {self.detectors} of {self.units} units are detectors of "
            f"{u['top_label']} unique concepts (IoU > {t:g}; {u['per_category']} counted per "
            "category)"
        )

    def unit_labels(self) -> list[dict[str, Any]]:
        """One record per unit: unit, label, category, iou (as in units.csv)."""
        rows = []
        for u in range(self.units):
            c = int(self.scores.label[u])
            rows.append(
                {
                    "unit": u,
                    "label": self.concepts[c][1] if c >= 0 else "",
                    "category": self.categories[int(self.scores.category[u])] if c >= 0 else "",
                    "iou": float(self.scores.iou[u]),
                }
            )
        return rows


def read_cached(directory: Path, key: str) -> LayerCounts | None:
    """The counts stored in ``directory`` if its summary holds ``key`` and its files are
    all there; None otherwise."""
    try:
        summary = LayerSummary.read(directory)
    except DissectError:
        return None
    if summary.cache_key != key or not all((directory / f).is_file() for f in COUNT_FILES):
        return None
    try:
        with np.load(directory / "counts.npz", allow_pickle=False) as z:
            counts = {k: z[k] for k in z.files if k not in ("categories", "concept_ids")}
        with np.load(directory / "topk.npz", allow_pickle=False) as z:
            idx, val = z["indices"], z["values"]
        thr = np.load(directory / "thresholds.npy", allow_pickle=False)
    except (OSError, ValueError, KeyError):
        return None
    p = _read_p_values(directory / PVALUES, counts["intersection"].shape)
    return LayerCounts(counts, thr, idx, val, summary.activation_shape, p)


def _read_p_values(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """``pvalues.npy`` when it is there and of ``shape``; None otherwise (a layer cached
    before significance tests existed, or a damaged file)."""
    try:
        p = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return p if p.shape == shape and p.dtype == np.float64 else None


def _f(x: float) -> str:
    return f"{x:.6f}"


def write_layer(
    directory: Path,
    layer: str,
    data: LayerCounts,
    selection: ConceptSelection,
    mode: str,
    iou_threshold: float,
    summary_extra: dict[str, Any],
    legacy_csv: bool,
    reused: bool,
    write: bool = True,
    alpha: float = 0.05,
) -> DissectionResult:
    """Score ``data`` and write every file of the layer (``write=False``: none, e.g. on
    the ranks of a distributed run other than 0); return the result. With p-values, a
    unit's label is significant when its adjusted p ≤ ``alpha``."""
    if write:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SUMMARY).unlink(missing_ok=True)  # invalid until rewritten last
    cats = selection.categories
    names = selection.names
    concept_cats = [cats[k] for k in selection.concept_category]
    iou = iou_matrix(data.counts, selection.concept_category, mode)
    scores = score(iou, selection.concept_category, len(cats))
    sig = None
    doc = {
        "layer": layer,
        **summary_extra,
        **detector_summary(scores, names, cats, iou_threshold),
        "activation_shape": list(data.shape),
        "reused": reused,
    }
    if data.p_values is not None:
        from broden.dissect.significance import label_significance

        sig = label_significance(data.p_values, scores.label, alpha=alpha)
        doc["significant_detectors"] = int((sig.significant & (scores.iou > iou_threshold)).sum())
    doc["settings"] = {
        **doc.get("settings", {}),
        "unit_area": mode,
        "iou_threshold": iou_threshold,
        "alpha": alpha,
    }
    summary = LayerSummary.model_validate(doc)
    if write:
        _write_files(directory, data, selection, iou, (scores, sig), mode, legacy_csv, summary)
    return DissectionResult(
        layer=layer,
        directory=directory,
        concepts=list(zip((int(i) for i in selection.ids), names, concept_cats, strict=True)),
        categories=cats,
        iou=iou,
        thresholds=np.asarray(data.thresholds, np.float64),
        counts=data.counts,
        scores=scores,
        top_indices=data.top_indices,
        top_values=data.top_values,
        summary=summary,
        reused=reused,
        significance=sig,
    )


def _write_files(
    directory: Path,
    data: LayerCounts,
    selection: ConceptSelection,
    iou: np.ndarray,
    scored: tuple[Scores, LabelSignificance | None],
    mode: str,
    legacy_csv: bool,
    summary: LayerSummary,
) -> None:
    scores, sig = scored
    reused = summary.reused
    cats, names = selection.categories, selection.names
    concept_cats = [cats[k] for k in selection.concept_category]
    if not reused:
        arrays: dict[str, Any] = {k: np.asarray(v, np.int64) for k, v in data.counts.items()}
        arrays["categories"] = np.array(cats, dtype=str)
        arrays["concept_ids"] = selection.ids.astype(np.int64)
        np.savez(directory / "counts.npz", **arrays)
        np.save(directory / "thresholds.npy", np.asarray(data.thresholds, np.float64))
        np.savez(
            directory / "topk.npz",
            indices=data.top_indices.astype(np.int64),
            values=data.top_values.astype(np.float64),
        )
        if data.p_values is None:
            (directory / PVALUES).unlink(missing_ok=True)
        else:
            np.save(directory / PVALUES, np.asarray(data.p_values, np.float64))
    np.save(directory / "iou.npy", iou)

    with open(directory / "concepts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "name", "category"])
        for cid, name, cat in zip(selection.ids, names, concept_cats, strict=True):
            w.writerow([int(cid), name, cat])

    def name_of(col: int) -> str:
        return names[col] if col >= 0 else ""

    with open(directory / "units.csv", "w", newline="") as f:
        w = csv.writer(f)
        header = ["unit", "label", "category", "iou"]
        for cat in cats:
            header += [f"{cat}_label", f"{cat}_iou"]
        w.writerow([*header, "p_value", "significant"])
        for u in range(len(iou)):
            lab = int(scores.label[u])
            row = [
                u,
                name_of(lab),
                cats[int(scores.category[u])] if lab >= 0 else "",
                _f(scores.iou[u]),
            ]
            for k in range(len(cats)):
                row += [name_of(int(scores.best[u, k])), _f(scores.best_iou[u, k])]
            w.writerow([*row, *_significance_cells(sig, u)])

    if legacy_csv:
        write_legacy_csv(directory / "tally.csv", data.counts, iou, scores, selection, mode)
    summary.write(directory)


def _significance_cells(sig: LabelSignificance | None, u: int) -> list[str]:
    """``p_value`` (``%.6g``) and ``significant`` (1/0) of unit ``u``: both empty without
    p-values; p_value empty and significant 0 where the unit has no label or its label
    was not tested (too few informative images)."""
    if sig is None:
        return ["", ""]
    if not sig.tested[u]:
        return ["", "0"]
    return [f"{float(sig.p_value[u]):.6g}", str(int(sig.significant[u]))]


def write_legacy_csv(
    path: Path,
    counts: dict[str, np.ndarray],
    iou: np.ndarray,
    scores: Scores,
    selection: ConceptSelection,
    mode: str,
) -> None:
    """NetDissect-Lite's ``tally.csv``: unit from 1; unit, category, label, score, then per
    category <cat>-label, -truth, -activation, -intersect, -iou; rows by descending score.
    Like NetDissect-Lite, a category's label is its argmax even where the IoU is 0."""
    cats = selection.categories
    unit_area = counts[f"unit_area_{mode}"]
    inter = counts["intersection"]
    truth = counts["concept_area"]
    U = len(iou)
    best_any = np.zeros((U, len(cats)), np.int64)
    for k in range(len(cats)):
        cols = np.flatnonzero(selection.concept_category == k)
        best_any[:, k] = cols[iou[:, cols].argmax(axis=1)]
    top_cat = scores.best_iou.argmax(axis=1) if cats else np.zeros(U, np.int64)
    order = sorted(range(U), key=lambda u: (-scores.iou[u], u))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        header = ["unit", "category", "label", "score"]
        for cat in cats:
            header += [
                f"{cat}-label",
                f"{cat}-truth",
                f"{cat}-activation",
                f"{cat}-intersect",
                f"{cat}-iou",
            ]
        w.writerow(header)
        for u in order:
            k0 = int(top_cat[u])
            c0 = int(best_any[u, k0])
            row: list[Any] = [u + 1, cats[k0], selection.names[c0], repr(float(iou[u, c0]))]
            for k in range(len(cats)):
                c = int(best_any[u, k])
                row += [
                    selection.names[c],
                    int(truth[c]),
                    int(unit_area[u, k]),
                    int(inter[u, c]),
                    repr(float(iou[u, c])),
                ]
            w.writerow(row)
