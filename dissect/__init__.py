"""Network dissection: score every unit of a layer against every concept of a store.

Public API (imported lazily, so ``import broden.dissect`` does not import torch)::

    from broden.dissect import DissectSettings, dissect, score_activations
    results = dissect("broden.zarr", "dissect.zoo:resnet18", ["layer3", "layer4"],
                      DissectSettings(quantile=0.005), out="out")
    print(results["layer4"].headline())
    r = score_activations("broden.zarr", "conv5.npy", out="out")   # N×U×h×w activations

See :mod:`broden.dissect.pipeline` for the passes, :mod:`broden.dissect.settings` for the
options, :mod:`broden.dissect.thresholds`, :mod:`broden.dissect.tally` and
:mod:`broden.dissect.scoring` for the definitions, :mod:`broden.dissect.results` and
:mod:`broden.dissect.summary` for the files written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broden.dissect.dispatch import Dissection, run_dissection
    from broden.dissect.errors import DissectError
    from broden.dissect.pipeline import dissect, score_activations
    from broden.dissect.results import DissectionResult
    from broden.dissect.settings import DissectSettings
    from broden.dissect.summary import LayerSummary

__all__ = [
    "DissectError",
    "DissectSettings",
    "Dissection",
    "DissectionResult",
    "LayerSummary",
    "dissect",
    "run_dissection",
    "score_activations",
]

_LAZY = {
    "dissect": "broden.dissect.pipeline",
    "score_activations": "broden.dissect.pipeline",
    "run_dissection": "broden.dissect.dispatch",
    "Dissection": "broden.dissect.dispatch",
    "DissectionResult": "broden.dissect.results",
    "DissectError": "broden.dissect.errors",
    "DissectSettings": "broden.dissect.settings",
    "LayerSummary": "broden.dissect.summary",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'broden.dissect' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
