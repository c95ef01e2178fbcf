"""From counts to IoU, labels and detectors, as Network Dissection defined them.

``IoU[u, c] = I[u, c] / (A[u, primary(c)] + area[c] - I[u, c])`` (0 where the
denominator is 0), with the unit area A of the chosen mode (``original``, ``lite``,
``plain``; see :mod:`broden.dissect.tally`). Each unit's best concept per category is the
argmax over the concepts whose primary category it is (ties: lowest id); its label is
the best of those over the categories (ties: earlier category in hierarchy order). A
unit with IoU 0 everywhere in a category has no label there (empty name).

A unit is a *detector* when its best IoU exceeds ``iou_threshold`` (0.04). Unique
detectors are counted both ways the paper did: ``top_label`` (distinct best labels of
the detector units; the paper's text and NetDissect's report) and ``per_category``
(for each category, distinct best-in-category labels of the units whose best IoU in
that category exceeds the threshold, summed; the CVPR figure data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MODES: tuple[str, ...] = ("original", "lite", "plain")


def iou_matrix(
    counts: dict[str, np.ndarray], concept_category: np.ndarray, mode: str
) -> np.ndarray:
    """Units × concepts float64 IoU from the tally's counts for unit-area ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown unit-area mode {mode!r}")
    inter = counts["intersection"].astype(np.float64)
    unit = counts[f"unit_area_{mode}"][:, concept_category].astype(np.float64)
    denom = unit + counts["concept_area"].astype(np.float64)[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, denom, out=out, where=denom > 0)
    return out


@dataclass
class Scores:
    """Labels of every unit. Per category k: ``best[:, k]`` (column index, −1: none) and
    ``best_iou[:, k]``; overall: ``label`` (column, −1: none), ``category`` (index, −1),
    ``iou``."""

    best: np.ndarray
    best_iou: np.ndarray
    label: np.ndarray
    category: np.ndarray
    iou: np.ndarray


def score(iou: np.ndarray, concept_category: np.ndarray, n_categories: int) -> Scores:
    U = iou.shape[0]
    best = np.full((U, n_categories), -1, np.int64)
    best_iou = np.zeros((U, n_categories), np.float64)
    for k in range(n_categories):
        cols = np.flatnonzero(concept_category == k)
        if cols.size == 0:
            continue
        sub = iou[:, cols]
        arg = sub.argmax(axis=1)
        val = sub[np.arange(U), arg]
        best_iou[:, k] = val
        best[:, k] = np.where(val > 0, cols[arg], -1)
    if n_categories:
        cat = best_iou.argmax(axis=1)
        val = best_iou[np.arange(U), cat]
        label = best[np.arange(U), cat]
    else:
        cat = np.zeros(U, np.int64)
        val = np.zeros(U)
        label = np.full(U, -1)
    has = val > 0
    return Scores(best, best_iou, np.where(has, label, -1), np.where(has, cat, -1), val)


def detector_summary(
    scores: Scores, names: list[str], categories: list[str], iou_threshold: float
) -> dict[str, Any]:
    """Detectors and unique detectors, overall and per category (see module docstring)."""
    det = scores.iou > iou_threshold
    top_labels = {int(c) for c in scores.label[det]}
    per_cat: dict[str, dict[str, int]] = {}
    total_pc = 0
    for k, cat in enumerate(categories):
        top_units = det & (scores.category == k)
        in_cat = scores.best_iou[:, k] > iou_threshold
        uniq = {int(c) for c in scores.best[in_cat, k]}
        per_cat[cat] = {
            "detectors": int(top_units.sum()),
            "unique_top_label": len({int(c) for c in scores.label[top_units]}),
            "units_over_threshold": int(in_cat.sum()),
            "unique_per_category": len(uniq),
        }
        total_pc += len(uniq)
    return {
        "units": int(len(scores.iou)),
        "detectors": int(det.sum()),
        "unique_detectors": {"top_label": len(top_labels), "per_category": total_pc},
        "per_category": per_cat,
        "top_labels": sorted(names[c] for c in top_labels),
    }
