"""Reading what the report shows: a dissected layer's files (:func:`read_layer`) and the
store it was dissected on, checked to be that store."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from broden.dissect.errors import DissectError
from broden.dissect.summary import LayerSummary

if TYPE_CHECKING:
    from broden.store import BrodenStore


@dataclass
class UnitRow:
    unit: int
    label: str
    category: str
    iou: float
    #: the label's adjusted p-value and whether it is significant (None: not in units.csv)
    p_value: float | None = None
    significant: bool | None = None


def _unit_row(r: dict[str, str]) -> UnitRow:
    p, sig = r.get("p_value") or "", r.get("significant") or ""
    return UnitRow(
        int(r["unit"]),
        r["label"],
        r["category"],
        float(r["iou"]),
        float(p) if p else None,
        sig == "1" if sig else None,
    )


@dataclass(frozen=True)
class UnitFormula:
    """A unit's best formula (``formulas.json``): readable ``text``, its plain ``iou``
    and the ``formula`` as written (a concept name or ``[op, F, name]``)."""

    text: str
    iou: float
    formula: Any


@dataclass
class LayerResults:
    """The files of one dissected layer that the report reads."""

    name: str
    directory: Path
    summary: LayerSummary
    units: list[UnitRow]
    concepts: dict[tuple[str, str], int]  # (name, category) -> concept id
    thresholds: np.ndarray
    top_indices: np.ndarray  # units × K store indices, best first
    top_values: np.ndarray
    #: with formulas (``formulas.json``): each unit's best formula
    formulas: dict[int, UnitFormula] = field(default_factory=dict)

    @property
    def iou_threshold(self) -> float:
        return self.summary.settings.iou_threshold

    @property
    def detectors(self) -> int:
        return self.summary.detectors

    @property
    def unique(self) -> dict[str, int]:
        u = self.summary.unique_detectors
        return {"top_label": u.top_label, "per_category": u.per_category}


def read_layer(directory: Path) -> LayerResults:
    """One layer's results; :class:`DissectError` naming the file that is missing or
    unreadable."""
    summary = LayerSummary.read(directory)
    current = directory / "units.csv"
    try:
        with open(current, newline="") as f:
            units = [_unit_row(r) for r in csv.DictReader(f)]
        current = directory / "concepts.csv"
        with open(current, newline="") as f:
            concepts = {(r["name"], r["category"]): int(r["id"]) for r in csv.DictReader(f)}
        current = directory / "thresholds.npy"
        thresholds = np.load(current, allow_pickle=False)
        current = directory / "topk.npz"
        with np.load(current, allow_pickle=False) as z:
            top_indices, top_values = z["indices"], z["values"]
    except FileNotFoundError:
        raise DissectError(
            f"{directory} is not a complete dissected layer: {current.name} is missing"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DissectError(
            f"{directory}: cannot read {current.name} ({type(e).__name__}: {e}); "
            "re-run `broden dissect` for this layer"
        ) from None
    n = len(thresholds)
    if len(units) != n or top_indices.shape[0] != n:
        raise DissectError(
            f"{directory}: units.csv has {len(units)} units, thresholds.npy {n} and topk.npz "
            f"{top_indices.shape[0]}; the folder mixes files of different runs"
        )
    return LayerResults(
        summary.layer,
        directory,
        summary,
        units,
        concepts,
        thresholds,
        top_indices,
        top_values,
        read_formulas_text(directory),
    )


def read_formulas_text(directory: Path) -> dict[int, UnitFormula]:
    """``formulas.json`` by unit; empty when the layer has none.
    Read as data (names are only shown, escaped); a file that does not read is a
    :class:`DissectError` naming it."""
    from broden.dissect.explain.formulas import formula_to_text

    path = directory / "formulas.json"
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return {
            int(r["unit"]): UnitFormula(
                formula_to_text(r["formula"]), float(r["iou"]), r["formula"]
            )
            for r in rows
        }
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise DissectError(
            f"{directory}: cannot read formulas.json ({type(e).__name__}: {e}); re-run "
            "`broden dissect --formulas N` for this layer"
        ) from None


def open_layer_store(path: str | os.PathLike[str], layer: LayerResults, given: bool) -> BrodenStore:
    from broden.store import StoreError, open_store

    if not Path(path).exists():
        how = "given" if given else f"recorded in {layer.directory / 'summary.json'}"
        raise DissectError(
            f"layer {layer.name}: the store {path} ({how}) does not exist; pass the store "
            "that was dissected with --store"
        )
    try:
        return open_store(Path(path))
    except StoreError as e:
        raise DissectError(f"layer {layer.name}: {e}") from None


def check_store(store: BrodenStore, layer: LayerResults) -> None:
    rec = layer.summary.store
    fp = store.fingerprint()
    if rec.fingerprint != fp:
        raise DissectError(
            f"layer {layer.name}: the store {store.path} is not the one dissected "
            f"(fingerprint {fp}, recorded {rec.fingerprint} for {rec.path}); "
            "its top-image numbers would point at other images. Pass the dissected store "
            "with --store"
        )
