"""Compositional explanations of units: logical formulas of concepts (``(water OR river)
AND NOT blue-c``) found by beam search over IoU (Mu & Andreas, NeurIPS 2020).

Standalone (numpy only; nothing of the dissection pipeline)::

    from broden.dissect.explain import ConceptMasks, FormulaSearch, UnitMask
    masks = ConceptMasks.from_images(per_image_entries, names, label_size=112)  # once
    search = FormulaSearch(masks, length=3, beam=5)
    best = search.explain(UnitMask(unit=0, image=images, pixel=pixels))
    best.formula, best.iou        # ["and_not", ["or", "water", "river"], "blue-c"], 0.21

See :mod:`broden.dissect.explain.formulas` for the definitions (IoU, the search, the tie
rule, the skipped extensions) and :mod:`broden.dissect.explain.masks` for the inputs.
In a dissection (``DissectSettings(formulas=N, beam=B)``, ``broden dissect --formulas N``)
:mod:`broden.dissect.explain.collect` (not imported here: it needs torch) collects the
inputs from the tally's pass and writes ``formulas.json`` and ``formulas.csv``.
"""

from __future__ import annotations

from broden.dissect.explain.formulas import (
    OPS,
    Explanation,
    Formula,
    FormulaJSON,
    FormulaSearch,
    equivalence_key,
    evaluate_formula,
    explain_units,
    formula_concepts,
    formula_from_json,
    formula_from_key,
    formula_key,
    formula_length,
    formula_mask,
    formula_to_json,
    formula_to_text,
)
from broden.dissect.explain.masks import (
    ConceptMasks,
    ConceptMasksBuilder,
    ImageConcepts,
    UnitAtoms,
    UnitMask,
)

__all__ = [
    "OPS",
    "ConceptMasks",
    "ConceptMasksBuilder",
    "Explanation",
    "Formula",
    "FormulaJSON",
    "FormulaSearch",
    "ImageConcepts",
    "UnitAtoms",
    "UnitMask",
    "equivalence_key",
    "evaluate_formula",
    "explain_units",
    "formula_concepts",
    "formula_from_json",
    "formula_from_key",
    "formula_key",
    "formula_length",
    "formula_mask",
    "formula_to_json",
    "formula_to_text",
]
