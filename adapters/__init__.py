"""Concept sources: one module per public dataset format, each yielding SourceSamples.

Built-in adapters are listed in :data:`BUILTIN`; third-party packages register more
under the ``broden.adapters`` entry-point group (``name = "package.module:Class"``).
``broden adapters`` lists what is installed.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points

from broden.adapters.base import (
    CATEGORY_ORDER,
    Adapter,
    AdapterOptions,
    Kind,
    PartOf,
    Prebuilt,
    RootOptions,
    SampleError,
    SourceError,
    SourceSample,
    category_sort_key,
)

__all__ = [
    "BUILTIN",
    "CATEGORY_ORDER",
    "Adapter",
    "AdapterOptions",
    "Kind",
    "PartOf",
    "Prebuilt",
    "RootOptions",
    "SampleError",
    "SourceError",
    "SourceSample",
    "available_adapters",
    "category_sort_key",
    "get_adapter_class",
]

#: name → "module:Class" of the adapters shipped with broden
BUILTIN: dict[str, str] = {
    "ade20k": "broden.adapters.ade20k:ADE20K",
    "broden_legacy": "broden.adapters.broden_legacy:BrodenLegacy",
    "dtd": "broden.adapters.dtd:DTD",
    "pascal": "broden.adapters.pascal:Pascal",
    "opensurfaces": "broden.adapters.opensurfaces:OpenSurfaces",
    "ade20k_sceneparsing": "broden.adapters.ade20k_sceneparsing:ADE20KSceneParsing",
    "coco": "broden.adapters.coco:COCO",
    "folder": "broden.adapters.folder:Folder",
}

ENTRY_POINT_GROUP = "broden.adapters"


def available_adapters() -> dict[str, str]:
    """All installed adapters: name → "module:Class" (built-ins win over entry points)."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    found.update(BUILTIN)
    return dict(sorted(found.items()))


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
