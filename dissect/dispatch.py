"""What ``broden dissect`` runs, as one library call: :func:`run_dissection` dissects a
model's layers or precomputed activations, with or without the rotation experiment."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from broden.dissect.errors import DissectError
from broden.dissect.experiments.rotation import (
    RotationResult,
    run_rotation_activations,
    run_rotations,
)
from broden.dissect.pipeline import ThresholdSpec, dissect, score_activations
from broden.dissect.results import DissectionResult, check_out
from broden.dissect.settings import DissectSettings
from broden.store import BrodenStore


@dataclass
class Dissection:
    """The dissected layers (unrotated, in order) and, with a rotation, each layer's
    rotation results."""

    results: list[DissectionResult]
    rotations: list[RotationResult] = field(default_factory=list)


def run_dissection(
    store: BrodenStore | str | os.PathLike[str],
    settings: DissectSettings,
    *,
    out: str | os.PathLike[str],
    model: Any = None,
    activations: Any = None,
    layers: Sequence[str] = (),
    weights: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    thresholds: ThresholdSpec = None,
    rotate: int | None = None,
    alphas: Sequence[float] | None = None,
) -> Dissection:
    """Dissect ``layers`` of ``model`` (:func:`~broden.dissect.dissect`) or the layer of
    ``activations`` (:func:`~broden.dissect.score_activations`; ``layers``: at most its
    name); with ``rotate`` (a seed), the rotation experiment at ``alphas`` (default 1.0)
    as well; ``weights`` and ``revision`` (of an ``hf:`` model) go with ``model``.
    Conflicting requests are a :class:`DissectError` naming the options, and so
    is an ``out`` that is a file, a broden store or inside one
    (:func:`~broden.dissect.results.check_out`)."""
    check_out(out)
    if alphas and rotate is None:
        raise DissectError("--alpha needs --rotate SEED")
    if settings.amp and activations is not None:
        raise DissectError("--amp applies to a model's forward pass, not to --activations")
    if rotate is not None and thresholds is not None:
        raise DissectError(
            "--thresholds cannot be combined with --rotate: the rotated units are new units, "
            "whose thresholds are computed from their own activations"
        )
    todo = list(alphas or [1.0])
    if activations is not None:
        if model is not None:
            raise DissectError("give either --model or --activations, not both")
        if weights is not None or revision is not None:
            raise DissectError("--weights and --revision go with --model, not --activations")
        if len(layers) > 1:
            raise DissectError("--activations holds one layer; give at most one --layer")
        name = layers[0] if layers else None
        if rotate is not None:
            rot = run_rotation_activations(
                store, activations, rotate, todo, settings, out=out, layer=name
            )
            return Dissection([rot.unrotated], [rot])
        result = score_activations(
            store, activations, name, settings, out=out, thresholds=thresholds
        )
        return Dissection([result])
    if model is None:
        raise DissectError("give --model SPEC (with --layer NAME) or --activations FILE")
    if not layers:
        raise DissectError("name the layers to dissect with --layer (repeatable)")
    if rotate is not None:
        by_layer = run_rotations(
            store,
            model,
            layers,
            rotate,
            todo,
            settings,
            out=out,
            weights=weights,
            revision=revision,
        )
        return Dissection([r.unrotated for r in by_layer.values()], list(by_layer.values()))
    got = dissect(
        store,
        model,
        layers,
        settings,
        out=out,
        weights=weights,
        revision=revision,
        thresholds=thresholds,
    )
    return Dissection(list(got.values()))
