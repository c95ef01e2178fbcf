"""Network dissection: score every unit of a layer against every concept of a store.

Public API (imported lazily, so ``import dissect`` does not import torch)::

    from broden.dissect import dissect, score_activations, DissectionResult, DissectError
    results = dissect("broden.zarr", "dissect.zoo:resnet18", ["layer3", "layer4"], out="out")
    print(results["layer4"].headline())
    r = score_activations("broden.zarr", "conv5.npy", out="out")   # N×U×h×w activations

See :mod:`broden.dissect.pipeline` for the passes, :mod:`broden.dissect.thresholds`,
:mod:`broden.dissect.tally` and :mod:`broden.dissect.scoring` for the definitions, and
:mod:`broden.dissect.results` for the files written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broden.dissect.errors import DissectError
    from broden.dissect.pipeline import dissect, score_activations
    from broden.dissect.results import DissectionResult

__all__ = ["DissectError", "DissectionResult", "dissect", "score_activations"]

_LAZY = {
    "dissect": "broden.dissect.pipeline",
    "score_activations": "broden.dissect.pipeline",
    "DissectionResult": "broden.dissect.results",
    "DissectError": "broden.dissect.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dissect' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
