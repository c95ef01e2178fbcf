"""The exception of :mod:`broden.dissect`: a failure the user can fix, with a message
that says what was expected and what was found (the CLI prints it and exits 2)."""

from __future__ import annotations

from broden.adapters.errors import BrodenError


class DissectError(BrodenError):
    """A dissection that cannot run as asked: unknown layer or concept, a model that does
    not load, activations that do not fit the store, non-finite activations, out of
    memory, ... The message names the problem and, where there is one, the fix."""
