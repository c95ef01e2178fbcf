"""Concept sources: one module per public dataset format, each yielding SourceSamples.

Every adapter, broden's own and third-party ones alike, is registered under the
``broden.adapters`` entry-point group (``name = "package.module:Class"``; broden's are in
its ``pyproject.toml``). ``broden adapters`` lists what is installed.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import EntryPoint, entry_points

from broden.adapters.base import (
    Adapter,
    AdapterOptions,
    PartOf,
    Prebuilt,
    RootOptions,
    SourceSample,
)
from broden.adapters.categories import CATEGORY_ORDER, Kind, category_sort_key
from broden.adapters.errors import BrodenError, SampleError, SourceError

__all__ = [
    "CATEGORY_ORDER",
    "Adapter",
    "AdapterOptions",
    "BrodenError",
    "Kind",
    "PartOf",
    "Prebuilt",
    "RootOptions",
    "SampleError",
    "SourceError",
    "SourceSample",
    "available_adapters",
    "builtin_adapters",
    "category_sort_key",
    "get_adapter_class",
]

ENTRY_POINT_GROUP = "broden.adapters"


def available_adapters() -> dict[str, str]:
    """All installed adapters: name → "module:Class", by name. Where a third-party
    package registers a name broden already has, broden's own adapter wins."""
    found: dict[str, str] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=_is_builtin):
        found[ep.name] = ep.value  # broden's own last, so they win
    return dict(sorted(found.items()))


def builtin_adapters() -> dict[str, str]:
    """The adapters that ship with broden: name → "module:Class"."""
    eps = entry_points(group=ENTRY_POINT_GROUP)
    return dict(sorted((ep.name, ep.value) for ep in eps if _is_builtin(ep)))


def _is_builtin(ep: EntryPoint) -> bool:
    return ep.dist is not None and ep.dist.name == "broden"


def get_adapter_class(name: str) -> type[Adapter]:
    """The adapter class registered as ``name``; :class:`SourceError` lists the known ones."""
    known = available_adapters()
    if name not in known:
        raise SourceError(f"unknown adapter {name!r}; installed adapters: {', '.join(known)}")
    module_name, _, attr = known[name].partition(":")
    try:
        cls = getattr(import_module(module_name), attr)
    except Exception as e:  # a plugin's import can fail in any way; name it, no traceback
        raise SourceError(
            f"adapter {name!r} ({known[name]}) cannot be loaded: {type(e).__name__}: {e}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise SourceError(f"adapter {name!r} ({known[name]}) is not an Adapter subclass")
    return cls
