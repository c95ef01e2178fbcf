"""Compositional explanations of units (Mu & Andreas, NeurIPS 2020, "Compositional
Explanations of Neurons"): a unit explained by a logical formula of concepts, found by a
beam search over formulas scored by IoU.

Formulas
    A formula F is a concept id (a leaf) or ``(op, F, c)``: F combined with one concept c
    by ``op``, one of ``"or"`` (F ∪ c), ``"and"`` (F ∩ c), ``"and_not"`` (F ∖ c). Its
    length is its number of leaves. Its mask is the set of pixels (of every image) it
    covers, with each concept's mask as in :mod:`broden.dissect.explain.masks` (a
    concept's pixels in every label layer of its categories, the whole image for a
    whole-image label). Written out: :func:`formula_to_json` (a concept name, or
    ``[op, F, name]``), :func:`formula_to_text` (``((water OR river) AND NOT blue-c)``).
    Its *key* (:func:`formula_key`) is the sequence ``(c0, op1, c1, op2, c2, ...)`` of
    concept ids and operator codes (``or`` 0, ``and`` 1, ``and_not`` 2).

IoU
    ``IoU(F) = |M ∩ F| / |M ∪ F|`` for the unit's mask M, intersection and union summed
    over all images (plain IoU, no per-category unit area), ``|M ∪ F| = |M| + |F| - |M ∩
    F|``; 0 where the union is empty. Counts are exact integers; the IoU compared is the
    float64 quotient of the two counts (equal fractions give equal floats).

The search (per unit, maximum length N, beam width B)
    The beam starts as the B best single concepts. Then, N - 1 times: every formula of
    the beam is extended by every concept with every operator, and the new beam is the
    B best *distinct* formulas of the previous beam and all the extensions. The answer is
    the best formula of the last beam: the best found, of length ≤ N (a beam keeps its
    formulas unless better ones replace them, so the best IoU never decreases with N).
    Only the concepts given (``concepts=``, default all) are leaves or extensions.

Skipped and merged
    - An extension by a concept already in the formula is not produced (so no ``c OR
      c``, ``c AND c``, ``c AND NOT c``, nor ``(a OR b) AND NOT a``). The paper allows
      it, but such a formula always covers the same pixels as one without the repeat (or
      none), so nothing is lost.
    - Formulas that are logically equivalent (same set of concepts and the same truth
      table over them, e.g. ``a OR b`` and ``b OR a``, ``(a AND NOT b) AND NOT c`` and
      ``(a AND NOT c) AND NOT b``) cover the same pixels in every dataset; they are one
      formula to the beam, represented by the first of them in the order below, so the
      beam never spends two places on one mask.

Order (ties)
    Better is: higher IoU, then shorter, then the smaller key (lexicographic over
    concept ids and operator codes). The order is total, so the result does not depend
    on the order of the concepts given or on repeated runs.

Speed
    For a beam formula F the IoU of ``F op c`` for every concept c at once follows from
    |M|, |M ∩ F|, |F| and the vectors |M ∩ c|, |M ∩ F ∩ c|, |F ∩ c|, |c|:
    OR: ``|M ∩ (F ∪ c)| = |M∩F| + |M∩c| - |M∩F∩c|``, ``|F ∪ c| = |F| + |c| - |F∩c|``;
    AND: ``|M∩F∩c|``, ``|F∩c|``; AND NOT: ``|M∩F| - |M∩F∩c|``, ``|F| - |F∩c|``. The
    unit's vectors come from the atoms its pixels fall on (a weighted count of those
    atoms' concepts, restricted to the atoms in F); |F| and |F ∩ c| from the dataset's
    atoms in F, computed once per formula (up to equivalence) and cached in the
    :class:`FormulaSearch`, shared by all the units it explains. Nothing passes over
    the dataset's pixels per candidate.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Union

import numpy as np

from broden.dissect.explain.masks import ConceptMasks, UnitAtoms, UnitMask

#: the operators, in key order (``or`` 0, ``and`` 1, ``and_not`` 2)
OPS: tuple[str, ...] = ("or", "and", "and_not")
OP_TEXT: dict[str, str] = {"or": "OR", "and": "AND", "and_not": "AND NOT"}

#: a formula of concept ids: a concept id, or (op, formula, concept id)
Formula = Union[int, tuple[str, "Formula", int]]  # noqa: UP007 (a recursive alias)
#: a formula of concept names, as JSON: a name, or [op, formula, name]
FormulaJSON = Union[str, list[Any]]  # noqa: UP007


def formula_key(formula: Formula) -> tuple[int, ...]:
    """The key ``(c0, op1, c1, ...)`` of a formula (see the module docstring)."""
    if isinstance(formula, tuple):
        op, inner, concept = formula
        if op not in OPS:
            raise ValueError(f"unknown operator {op!r}; expected one of {', '.join(OPS)}")
        return (*formula_key(inner), OPS.index(op), int(concept))
    return (int(formula),)


def formula_from_key(key: Sequence[int]) -> Formula:
    """The formula whose key is ``key`` (the inverse of :func:`formula_key`)."""
    out: Formula = int(key[0])
    for k in range(1, len(key), 2):
        out = (OPS[key[k]], out, int(key[k + 1]))
    return out


def formula_length(formula: Formula) -> int:
    """The number of leaves."""
    return (len(formula_key(formula)) + 1) // 2


def formula_concepts(formula: Formula) -> tuple[int, ...]:
    """The concept ids of the leaves, left to right."""
    return formula_key(formula)[0::2]


@lru_cache(maxsize=64)
def _variables(k: int) -> tuple[int, ...]:
    """Truth tables of k variables over the 2**k assignments, as bit patterns."""
    return tuple(sum(1 << x for x in range(1 << k) if x >> j & 1) for j in range(k))


def equivalence_key(key: Sequence[int]) -> tuple[tuple[int, ...], int]:
    """(sorted concept ids, truth table) of the formula with key ``key``: equal exactly
    for logically equivalent formulas of distinct concepts."""
    leaves = tuple(key[0::2])
    order = sorted(leaves)
    var = dict(zip(order, _variables(len(order)), strict=True))
    full = (1 << (1 << len(order))) - 1
    table = var[leaves[0]]
    for k in range(1, len(key), 2):
        v = var[key[k + 1]]
        table = (table | v, table & v, table & ~v & full)[key[k]]
    return tuple(order), table


def formula_to_json(formula: Formula, names: Sequence[str]) -> FormulaJSON:
    """The formula with concept names: a name, or ``[op, F, name]``."""
    if isinstance(formula, tuple):
        op, inner, concept = formula
        return [op, formula_to_json(inner, names), names[concept]]
    return names[int(formula)]


def formula_from_json(obj: FormulaJSON, names: Sequence[str]) -> Formula:
    """The formula of concept ids from its JSON form (the inverse of
    :func:`formula_to_json`); unknown names and operators fail."""
    ids = {n: i for i, n in enumerate(names)}

    def concept(name: Any) -> int:
        if name not in ids:
            raise ValueError(f"unknown concept {name!r} in formula {obj!r}")
        return ids[name]

    def walk(x: Any) -> Formula:
        if isinstance(x, list) and len(x) == 3 and x[0] in OPS:
            return (x[0], walk(x[1]), concept(x[2]))
        if isinstance(x, str):
            return concept(x)
        raise ValueError(f"expected a concept name or [op, formula, name], got {x!r}")

    return walk(obj)


def formula_to_text(formula: Formula | FormulaJSON, names: Sequence[str] | None = None) -> str:
    """Readable: ``((water OR river) AND NOT blue-c)``. ``formula`` is a formula of
    concept ids (``names`` required) or of names (:func:`formula_to_json`'s form)."""
    if isinstance(formula, list | tuple):
        op, inner, concept = formula
        last = concept if isinstance(formula, list) else formula_to_text(concept, names)
        return f"({formula_to_text(inner, names)} {OP_TEXT[op]} {last})"
    if isinstance(formula, str):
        return formula
    if names is None:
        raise ValueError("a formula of concept ids needs the concept names")
    return names[int(formula)]


def formula_mask(formula: Formula, concepts: np.ndarray | ConceptMasks) -> np.ndarray:
    """The formula's dense boolean mask (n_images, L, L), from dense concept masks
    ``concepts[c]`` (an array (n_concepts, n_images, L, L)) or from
    :class:`ConceptMasks` (each leaf's mask rebuilt densely)."""

    def leaf(c: int) -> np.ndarray:
        if isinstance(concepts, ConceptMasks):
            return concepts.dense(c)
        return np.asarray(concepts[c], bool)

    if not isinstance(formula, tuple):
        return leaf(int(formula)).copy()
    op, inner, c = formula
    f, m = formula_mask(inner, concepts), leaf(int(c))
    return {"or": f | m, "and": f & m, "and_not": f & ~m}[op]


def evaluate_formula(
    formula: Formula, concepts: np.ndarray | ConceptMasks, unit: np.ndarray | UnitMask
) -> float:
    """The IoU of ``formula`` for the unit's mask, by brute force over dense masks:
    ``(M & F).sum() / (M | F).sum()`` (0 for an empty union). ``unit``: a boolean mask
    (n_images, L, L) or a :class:`UnitMask`. Independent of the search (for tests and
    the baseline)."""
    f = formula_mask(formula, concepts)
    if isinstance(unit, UnitMask):
        m = np.zeros(f.shape, bool)
        m.reshape(f.shape[0], -1)[unit.image, unit.pixel] = True
    else:
        m = np.asarray(unit, bool).reshape(f.shape)
    union = int(np.count_nonzero(m | f))
    return int(np.count_nonzero(m & f)) / union if union else 0.0


@dataclass(frozen=True)
class Explanation:
    """A unit's best formula: ``formula`` (concept names, :func:`formula_to_json`),
    ``ids`` (the same with concept ids), its ``iou`` and ``length``."""

    unit: int
    formula: FormulaJSON
    iou: float
    length: int
    ids: Formula

    @property
    def text(self) -> str:
        return formula_to_text(self.formula)


@dataclass(eq=False)
class _Entry:
    """A formula of the beam: its key, IoU, equivalence class and mask over the unit's atoms."""

    key: tuple[int, ...]
    iou: float
    eq: tuple[tuple[int, ...], int]
    unit_mask: np.ndarray

    @property
    def order(self) -> tuple[float, int, tuple[int, ...]]:
        return (-self.iou, len(self.key), self.key)


def _ratio(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    out = np.zeros(inter.shape, np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


class FormulaSearch:
    """The beam search of the module docstring over one dataset's concept masks.

    ``length``: the maximum formula length N (≥ 1); ``beam``: the beam width B (≥ 1);
    ``concepts``: the concept ids allowed as leaves (default all); ``cache_size``: how
    many formulas' dataset counts (|F|, |F ∩ c| for every c: 8·(C + 1) bytes each) to
    keep, shared by every unit explained with this object. Example::

        search = FormulaSearch(masks, length=3, beam=5)
        best = search.explain(UnitMask.from_dense(7, unit_mask))
        print(best.unit, best.text, best.iou)
    """

    def __init__(
        self,
        masks: ConceptMasks,
        length: int = 3,
        beam: int = 5,
        concepts: Sequence[int] | np.ndarray | None = None,
        cache_size: int = 100_000,
    ) -> None:
        if length < 1 or beam < 1:
            raise ValueError(f"length {length}, beam {beam}: both must be at least 1")
        C = masks.n_concepts
        allowed = np.zeros(C, bool)
        if concepts is None:
            allowed[:] = True
        else:
            ids = np.asarray(concepts, np.int64).ravel()
            bad = ids[(ids < 0) | (ids >= C)]
            if bad.size:
                raise ValueError(f"concept ids {bad.tolist()} outside 0..{C - 1}")
            allowed[ids] = True
        if not allowed.any():
            raise ValueError("no concepts to explain with (an empty concept subset)")
        self.masks, self.length, self.beam, self.allowed = masks, length, beam, allowed
        self.cache_size = cache_size
        #: the extensions are ordered best-first in two parts: the ``prefilter · B`` best
        #: (with ties), then, if the beam is not full yet, the rest
        self.prefilter = 4
        self._cache: dict[tuple[tuple[int, ...], int], tuple[int, np.ndarray]] = {}
        self.cache_hits = self.cache_misses = 0

    def dataset_counts(self, key: tuple[int, ...]) -> tuple[int, np.ndarray]:
        """(|F|, |F ∩ c| for every concept c) of the formula with key ``key``, cached
        by equivalence class."""
        eq = equivalence_key(key)
        hit = self._cache.get(eq)
        if hit is not None:
            self.cache_hits += 1
            return hit
        self.cache_misses += 1
        m = self.masks
        if len(key) == 1:
            atoms = m.leaf_atoms(key[0])
        else:
            mask = np.zeros(m.n_atoms, bool)
            mask[m.leaf_atoms(key[0])] = True
            for k in range(1, len(key), 2):
                leaf = np.zeros(m.n_atoms, bool)
                leaf[m.leaf_atoms(key[k + 1])] = True
                mask = (mask | leaf, mask & leaf, mask & ~leaf)[key[k]]
            atoms = np.flatnonzero(mask)
        out = m.counts(atoms)
        if len(self._cache) >= self.cache_size:  # drop the oldest entry
            del self._cache[next(iter(self._cache))]
        self._cache[eq] = out
        return out

    def explain(self, unit: UnitMask | UnitAtoms) -> Explanation:
        """The best formula of length ≤ N for one unit."""
        ua = unit if isinstance(unit, UnitAtoms) else self.masks.unit_atoms(unit)
        beam = self._first_beam(ua)
        for _ in range(self.length - 1):
            beam = self._step(ua, beam)
        best = beam[0]
        ids = formula_from_key(best.key)
        return Explanation(
            unit=ua.unit,
            formula=formula_to_json(ids, self.masks.names),
            iou=best.iou,
            length=(len(best.key) + 1) // 2,
            ids=ids,
        )

    def explain_all(self, units: Iterable[UnitMask | UnitAtoms]) -> list[Explanation]:
        """:meth:`explain` for each unit, in order."""
        return [self.explain(u) for u in units]

    def _first_beam(self, ua: UnitAtoms) -> list[_Entry]:
        mc = ua.concept_inter
        iou = _ratio(mc, ua.size + self.masks.concept_area - mc)
        cand = np.flatnonzero(self.allowed)
        best = cand[np.lexsort((cand, -iou[cand]))][: self.beam]
        return [
            _Entry((int(c),), float(iou[c]), equivalence_key((int(c),)), ua.leaf(c)) for c in best
        ]

    def _step(self, ua: UnitAtoms, beam: list[_Entry]) -> list[_Entry]:
        """The next beam: the B best distinct formulas of ``beam`` and its extensions."""
        C, m = self.masks.n_concepts, ua.size
        area, mc = self.masks.concept_area, ua.concept_inter
        parents = sorted(beam, key=lambda e: (len(e.key), e.key))
        ious = np.zeros((len(parents), 3, C))
        valid = np.zeros((len(parents), 3, C), bool)
        for r, e in enumerate(parents):
            mF, mFc = ua.inter_by_concept(e.unit_mask)
            fF, fc = self.dataset_counts(e.key)
            inter = np.stack([mF + mc - mFc, mFc, mF - mFc])
            size = np.stack([fF + area - fc, fc, fF - fc])
            ious[r] = _ratio(inter, m + size - inter)
            ok = self.allowed.copy()
            ok[list(e.key[0::2])] = False
            valid[r] = ok
        # flat index order is (parent's (length, key), op, concept): a stable sort by -IoU
        # orders the extensions as the module docstring says
        idx = np.flatnonzero(valid)
        vals = ious.ravel()[idx]

        def extensions() -> Iterator[tuple[tuple[float, int, tuple[int, ...]], int]]:
            k = min(len(vals), max(1, self.prefilter * self.beam))
            if k == 0:
                return
            cut = np.partition(vals, len(vals) - k)[len(vals) - k]
            for part in (np.flatnonzero(vals >= cut), np.flatnonzero(vals < cut)):
                for j in part[np.argsort(-vals[part], kind="stable")]:
                    flat = int(idx[j])
                    r, op, c = flat // (3 * C), flat // C % 3, flat % C
                    key = (*parents[r].key, op, c)
                    yield (-float(vals[j]), len(key), key), r

        old = sorted(beam, key=lambda e: e.order)
        out: list[_Entry] = []
        seen: set[tuple[tuple[int, ...], int]] = set()
        ext = extensions()
        nxt = next(ext, None)
        i = 0
        while len(out) < self.beam and (i < len(old) or nxt is not None):
            if nxt is None or (i < len(old) and old[i].order < nxt[0]):
                entry, i = old[i], i + 1
                if entry.eq not in seen:
                    seen.add(entry.eq)
                    out.append(entry)
                continue
            (neg, _, key), r = nxt
            nxt = next(ext, None)
            eq = equivalence_key(key)
            if eq in seen:
                continue
            seen.add(eq)
            pm, leaf = parents[r].unit_mask, ua.leaf(key[-1])
            mask = (pm | leaf, pm & leaf, pm & ~leaf)[key[-2]]
            out.append(_Entry(key, -neg, eq, mask))
        return out


def explain_units(
    masks: ConceptMasks,
    units: Iterable[UnitMask],
    length: int = 3,
    beam: int = 5,
    concepts: Sequence[int] | np.ndarray | None = None,
) -> list[Explanation]:
    """Each unit's best formula (:class:`FormulaSearch`, one cache for all the units)."""
    return FormulaSearch(masks, length, beam, concepts).explain_all(units)
