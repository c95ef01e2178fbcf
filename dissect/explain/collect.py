"""Compositional explanations in a dissection (``DissectSettings.formulas``,
``broden dissect --formulas N --beam B``): the inputs of the formula search collected
from the tally's own pass, the search over every unit of a layer, and the layer's
``formulas.json`` / ``formulas.csv``.

The dataset side (:class:`DatasetAtoms`, one per dissection call, shared by its
layers): every batch the tally sees adds its images' concept masks to a
:class:`~broden.dissect.explain.masks.ConceptMasksBuilder`, concept k being the k-th
concept of the :class:`~broden.dissect.concepts.ConceptSelection` (``--concepts``; the
names are those of ``concepts.csv``), at the store's label resolution, its pixels in
every layer of every pixel category, the whole image for a whole-image label. The
batch's labels then carry each pixel's atom id (``BatchLabels.atoms``).

The unit side (:class:`UnitAtomCounts`, one per layer): the tally calls it with the unit
and the atom of every active pixel it finds (its own upsampling, threshold and strict
``>``; after the unit transform, so a rotated layer is explained as rotated), and it
keeps only the number of each unit's active pixels per atom, exact int64 counts:
``torch.unique`` per chunk on the tally's device, merged on the host. Its memory is
16 bytes per distinct (unit, atom) pair, at most the number of active pixels (8 bytes
per pixel pair of int32 (image, pixel) would be ~8 GB for 512 units at Broden scale) and
usually far less, since a unit's pixels fall on few distinct label sets. The concept
masks themselves hold one uint16 per label pixel (L = 112: 25 KB per image).

Under ``torchrun`` (``--distributed``) formulas are refused by the settings (the search
needs every image's counts in one process).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from broden.dissect.concepts import ConceptSelection
from broden.dissect.data import StoreBatch
from broden.dissect.explain.formulas import Explanation, FormulaSearch, formula_from_json
from broden.dissect.explain.masks import ConceptMasks, ConceptMasksBuilder, ImageConcepts
from broden.dissect.tally import BatchLabels

#: a layer's formula files
FORMULAS_JSON = "formulas.json"
FORMULAS_CSV = "formulas.csv"
FORMULA_FILES = (FORMULAS_JSON, FORMULAS_CSV)
#: a (unit, atom) key is ``unit << _SHIFT | atom``
_SHIFT = 40


def image_concepts(column: np.ndarray, pixel: np.ndarray, image: np.ndarray) -> ImageConcepts:
    """One image's concept masks for the builder: ``pixel`` (L², Kp) and ``image`` (Ki,)
    global concept ids, ``column`` the selection's global id → column + 1 (0: not
    selected). Concept k = column k; a whole-image label's mask is None."""
    cols = column[pixel.astype(np.int64)]
    p, k = np.nonzero(cols)
    c = cols[p, k] - 1
    order = np.argsort(c, kind="stable")
    c, p = c[order], p[order]
    uniq, starts = np.unique(c, return_index=True)
    groups = np.split(p, starts[1:]) if len(uniq) else []
    entries: list[tuple[int, np.ndarray | None]] = [
        (int(u), px) for u, px in zip(uniq, groups, strict=True)
    ]
    whole = np.unique(column[image.astype(np.int64)])
    entries += [(int(w) - 1, None) for w in whole if w > 0]
    return entries


class DatasetAtoms:
    """The concept masks of the dissected images, built from the tally's batches (each
    image once, in the order the batches first come; a batch seen again, in a second
    pass, gets the same atom ids)."""

    def __init__(self, selection: ConceptSelection, label_size: int) -> None:
        self.builder = ConceptMasksBuilder(selection.names, label_size)
        self.column = np.asarray(selection.column, np.int64)
        self._first: dict[int, int] = {}  # a batch's first store index → builder image
        self._masks: ConceptMasks | None = None
        self._searches: dict[tuple[int, int], FormulaSearch] = {}

    def batch_atoms(self, batch: StoreBatch, labels: BatchLabels) -> torch.Tensor:
        """Every pixel's atom id of the batch (B·L², int64, on the labels' device)."""
        idx = batch.indices()
        first = self._first.get(int(idx[0]))
        if first is None:
            if self._masks is not None:
                raise RuntimeError("images added to the concept masks after the search began")
            first = self._first[int(idx[0])] = self.builder.n_images
            P = self.builder.label_size**2
            pixel = labels.pixel.cpu().numpy()
            image = labels.image.cpu().numpy()
            for b in range(len(idx)):
                self.builder.add(image_concepts(self.column, pixel[b * P : (b + 1) * P], image[b]))
        rows = [self.builder.pixel_atoms(first + b) for b in range(len(idx))]
        return torch.from_numpy(np.concatenate(rows)).to(labels.pixel.device)

    def masks(self, n_images: int) -> ConceptMasks:
        """The concept masks, once all ``n_images`` dissected images have been seen."""
        if self._masks is None:
            if self.builder.n_images != n_images:
                raise RuntimeError(
                    f"the tally saw {self.builder.n_images} images of the {n_images} dissected"
                )
            self._masks = self.builder.finish()
        return self._masks

    def search(self, n_images: int, length: int, beam: int) -> FormulaSearch:
        """The search (one per setting, its dataset counts cached across layers)."""
        key = (length, beam)
        if key not in self._searches:
            self._searches[key] = FormulaSearch(self.masks(n_images), length=length, beam=beam)
        return self._searches[key]


class UnitAtomCounts:
    """One layer's active pixels counted per (unit, atom) (see the module docstring);
    :meth:`add` is the tally's ``sink``."""

    def __init__(self, units: int) -> None:
        self.units = units
        self._keys: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self._pending = 0
        self._merged = 0

    def add(self, unit: torch.Tensor, atom: torch.Tensor) -> None:
        """Count one chunk's active pixels: ``unit[k]``, ``atom[k]`` of pixel k."""
        keys, counts = torch.unique((unit.long() << _SHIFT) | atom.long(), return_counts=True)
        self._keys.append(keys.cpu().numpy())
        self._counts.append(counts.cpu().numpy().astype(np.int64))
        self._pending += len(keys)
        if self._pending > max(1 << 22, 2 * self._merged):
            self._merge()

    def _merge(self) -> None:
        keys = np.concatenate(self._keys) if self._keys else np.zeros(0, np.int64)
        counts = np.concatenate(self._counts) if self._counts else np.zeros(0, np.int64)
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], counts[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else keys
        self._keys = [keys[starts]]
        self._counts = [np.add.reduceat(counts, starts) if len(keys) else counts]
        self._pending = self._merged = len(starts)

    def per_unit(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(unit, its atoms ascending, its pixel count on each) for every unit in order."""
        self._merge()
        keys, counts = self._keys[0], self._counts[0]
        units = keys >> _SHIFT
        ptr = np.searchsorted(units, np.arange(self.units + 1))
        for u in range(self.units):
            a, b = ptr[u], ptr[u + 1]
            yield u, keys[a:b] & ((1 << _SHIFT) - 1), counts[a:b]


def explain_layer(
    search: FormulaSearch, counts: UnitAtomCounts, layer: str, progress: bool
) -> list[Explanation]:
    """Every unit's best formula (a progress bar with ``progress``)."""
    masks = search.masks
    out = []
    units = tqdm(
        counts.per_unit(), total=counts.units, desc=f"formulas {layer}", unit="unit",
        disable=not progress, leave=False,
    )  # fmt: skip
    for unit, atoms, weight in units:
        out.append(search.explain(masks.unit_atoms_from_counts(unit, atoms, weight)))
    return out


def write_formulas(directory: Path, explanations: list[Explanation]) -> None:
    """``formulas.json`` (a list of ``{"unit", "formula", "iou", "length"}``, the formula
    as :func:`~broden.dissect.explain.formulas.formula_to_json` writes it) and
    ``formulas.csv`` (unit, formula as text, iou, length)."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [
        {"unit": e.unit, "formula": e.formula, "iou": float(e.iou), "length": e.length}
        for e in explanations
    ]
    (directory / FORMULAS_JSON).write_text(json.dumps(rows, indent=1) + "\n")
    with open(directory / FORMULAS_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["unit", "formula", "iou", "length"])
        for e in explanations:
            w.writerow([e.unit, e.text, repr(float(e.iou)), e.length])


def remove_formulas(directory: Path) -> None:
    """Remove a layer's formula files (a run without formulas must not leave old ones)."""
    for name in FORMULA_FILES:
        (directory / name).unlink(missing_ok=True)


def read_formulas(directory: Path, names: list[str]) -> list[Explanation] | None:
    """The explanations in ``directory/formulas.json`` (concept ids from ``names``, the
    columns of ``concepts.csv``); None when the file is missing or does not read."""
    try:
        rows = json.loads((directory / FORMULAS_JSON).read_text())
        return [
            Explanation(
                unit=int(r["unit"]),
                formula=r["formula"],
                iou=float(r["iou"]),
                length=int(r["length"]),
                ids=formula_from_json(r["formula"], names),
            )
            for r in rows
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return None
