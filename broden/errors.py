"""broden's errors in one place (the tree is drawn in :mod:`broden.adapters.errors`).

Catch :class:`BrodenError` for every failure a user can cause; the subclasses say where
it happened. ``DissectError`` (:mod:`broden.dissect.errors`) is a ``BrodenError`` too.
"""

from __future__ import annotations

from broden.adapters.errors import BrodenError, SampleError, SourceError


class ConfigError(BrodenError):
    """A config file that cannot be read or does not validate."""


class StoreError(BrodenError):
    """A path that is not a usable Broden store."""


class BuildError(StoreError):
    """A build (or add) that cannot go on: bad sources, a strict-mode skip, a staging folder
    of another run, ..."""


class RunnerError(BuildError):
    """A build worker died, or the Dask cluster cannot be used."""


__all__ = [
    "BrodenError",
    "BuildError",
    "ConfigError",
    "RunnerError",
    "SampleError",
    "SourceError",
    "StoreError",
]
