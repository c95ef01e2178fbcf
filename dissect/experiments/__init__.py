"""Experiments on top of the dissection engine (DESIGN.md §5): comparing layers and
models (:mod:`~broden.dissect.experiments.compare`), the basis-rotation experiment
(:mod:`~broden.dissect.experiments.rotation`), and segmenting images with a layer's
detectors (:mod:`~broden.dissect.experiments.segment`); their commands are
:mod:`~broden.dissect.experiments.cli`.

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

from broden.dissect.experiments.common import ExperimentWarning
from broden.dissect.experiments.compare import ComparisonResult, Series, compare
from broden.dissect.experiments.rotation import (
    ROTATED_DIR,
    ChannelRotation,
    RotationResult,
    parse_rotation_key,
    random_rotation,
    rotation_dir,
    rotation_key,
    rotation_power,
    run_rotation,
    run_rotation_activations,
    run_rotations,
    unit_transform_from_key,
)
from broden.dissect.experiments.segment import Segmentation, segment
from broden.dissect.results import layer_dirs

__all__ = [
    "ROTATED_DIR",
    "ChannelRotation",
    "ComparisonResult",
    "ExperimentWarning",
    "RotationResult",
    "Segmentation",
    "Series",
    "compare",
    "layer_dirs",
    "parse_rotation_key",
    "random_rotation",
    "rotation_dir",
    "rotation_key",
    "rotation_power",
    "run_rotation",
    "run_rotation_activations",
    "run_rotations",
    "segment",
    "unit_transform_from_key",
]
