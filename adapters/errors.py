"""The root of broden's errors, and the two kinds a source raises.

Every failure a user can cause is a :class:`BrodenError`: its message says what was
expected and what was found (naming the file, folder or option), and the ``broden``
command prints it as one ``error:`` line with exit status 2. The whole hierarchy::

    BrodenError
    ├── SourceError      a source folder or source entry that cannot be used (before any work)
    ├── SampleError      one sample that cannot be read; the build skips and lists it
    ├── ConfigError      a build config or concept set that cannot be read or is invalid
    │   └── ConceptSetError
    ├── StoreError       a path that is not a usable store, or a store that cannot be written
    │   ├── BuildError   a build or add that cannot go on (strict skip, dead worker, ...)
    │   │   └── RunnerError  a worker process died, or the Dask cluster is unusable
    │   └── ExportError  a legacy export that cannot be written
    └── DissectError     a dissection, report or experiment that cannot run as asked

They live in the lowest layer that raises them (this module for the source errors,
:mod:`broden.errors` for the build and store errors, :mod:`broden.dissect.errors` for
the dissection's); :mod:`broden.errors` re-exports all but ``DissectError``.
"""

from __future__ import annotations


class BrodenError(Exception):
    """A failure the user can fix; the message names the problem and, where there is one,
    the fix."""


class SourceError(BrodenError):
    """A source directory or configuration that cannot be used (raised before any work)."""


class SampleError(BrodenError):
    """One sample that cannot be read correctly; the build skips it and lists the reason."""
