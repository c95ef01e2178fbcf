"""The HTML report of a dissection run: what a researcher looks at.

The package: :mod:`~broden.dissect.report.read` (a layer's files, the store),
:mod:`~broden.dissect.report.chart` (the bar chart), :mod:`~broden.dissect.report.images`
(masks, tiles, strips), :mod:`~broden.dissect.report.maps` (the top images' unit maps),
:mod:`~broden.dissect.report.page` (:func:`write_report`, the templates).

:func:`write_report` reads every dissected layer in a results folder ``OUT/<layer>/``
(the files of :mod:`broden.dissect.results`) and writes one offline page, ``OUT/report.html``,
with its images beside it in ``OUT/report_files/``. Nothing on the page is fetched from
the network: the CSS and the small sorting script are inline, the charts and image
strips are local files. Per layer it shows

* the headline "k of n units are detectors of m unique concepts (IoU > t)" and the
  detectors and unique concepts per category;
* a bar chart of detectors per concept (one bar per distinct label of a detector unit,
  height = its number of units), grouped by category in the original NetDissect
  bar graph's order (object, scene, part, material, texture, color; other categories
  after them in store order), coloured by category;
* a unit table (unit order without JavaScript; sortable by unit, label, category and
  IoU with it) with each unit's top images: the ``top_k`` store images with the largest
  per-image maximum of the unit's activation (``topk.npz``, best first), dimmed to 20 %
  outside the unit's mask with its border outlined, and the same images with the
  pixels of the unit's concept instead (on hover, or for every row with a switch);
* with ``--formulas``, under each unit's label its best formula (``formulas.json``) and
  its plain IoU; hovering the formula shows the same images with the formula's pixels
  (each leaf's pixels as for the concept, combined by the formula's operators).

Masks: a results folder is data, and the report runs nothing it names. Each layer's
``topmaps.npy`` (written by ``broden dissect``: the maps of every unit's ``top_k`` best
images exactly as the tally saw them, after any unit transform, in their dtype: float32
for a model) is upsampled to the image size with the engine's bilinear rule
(:func:`broden.dissect.tally.upsample_reference`, ``align_corners=False``) and compared
with the unit's threshold (``thresholds.npy``) exactly as the tally compares (strictly
above). For results of an
earlier version without that file, the rows of the recorded activation file are read
(if the file is still there and unchanged), or, for a model, the top images are run
through the model the user names (``model=``, ``--model SPEC --weights FILE``; its
fingerprint must match the recorded one; the spec in ``summary.json`` is never
imported); otherwise the images are shown without unit masks and the page says how to
get them.

Display names drop Broden's ``-s`` (scene) and ``-c`` (color) suffixes, as the original
report did; the full name stays in the page (tooltips, ``data-`` attributes).

>>> write_report("results")                       # doctest: +SKIP
PosixPath('results/report.html')
"""

from broden.dissect.report.chart import BAR_ORDER, detector_counts, display_name, has_random_weights
from broden.dissect.report.images import (
    CONCEPT_OUTLINE,
    DIM,
    UNIT_OUTLINE,
    concept_mask,
    coverage,
    draw_masks,
    outline,
    strip,
    unit_masks,
)
from broden.dissect.report.page import FILES, REPORT, write_report
from broden.dissect.report.read import LayerResults, UnitRow, read_layer

__all__ = [
    "BAR_ORDER",
    "CONCEPT_OUTLINE",
    "DIM",
    "FILES",
    "REPORT",
    "UNIT_OUTLINE",
    "LayerResults",
    "UnitRow",
    "concept_mask",
    "coverage",
    "detector_counts",
    "display_name",
    "draw_masks",
    "has_random_weights",
    "outline",
    "read_layer",
    "strip",
    "unit_masks",
    "write_report",
]
