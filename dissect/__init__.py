"""Network dissection: score every unit of a layer against every concept of a store.

Public API (imported lazily, so ``import dissect`` does not import torch)::

    from dissect import dissect, score_activations, DissectionResult, DissectError
    results = dissect("broden.zarr", "dissect.zoo:resnet18", ["layer3", "layer4"], out="out")
    print(results["layer4"].headline())
    r = score_activations("broden.zarr", "conv5.npy", out="out")   # N×U×h×w activations

See :mod:`dissect.pipeline` for the passes, :mod:`dissect.thresholds`,
:mod:`dissect.tally` and :mod:`dissect.scoring` for the definitions, and
:mod:`dissect.results` for the files written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dissect.errors import DissectError
    from dissect.pipeline import dissect, score_activations
    from dissect.results import DissectionResult

__all__ = ["DissectError", "DissectionResult", "dissect", "score_activations"]

_LAZY = {
    "dissect": "dissect.pipeline",
    "score_activations": "dissect.pipeline",
    "DissectionResult": "dissect.results",
    "DissectError": "dissect.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dissect' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
