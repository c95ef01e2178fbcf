"""One error hierarchy: every failure a user can cause is a BrodenError, which the command
line turns into one `error:` line and exit status 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from broden.adapters.errors import BrodenError
from broden.concept_set import ConceptSetError
from broden.dissect.errors import DissectError
from broden.errors import BuildError, ConfigError, RunnerError, SampleError, SourceError, StoreError
from broden.legacy import ExportError


@pytest.mark.parametrize(
    "error",
    [SourceError, SampleError, ConfigError, ConceptSetError, StoreError, BuildError,
     RunnerError, ExportError, DissectError],
)  # fmt: skip
def test_every_user_error_is_a_broden_error(error: type[Exception]) -> None:
    assert issubclass(error, BrodenError)
    assert not issubclass(error, (ValueError, KeyError, OSError))  # never caught by accident


def test_the_cli_prints_any_broden_error_as_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from broden import inspect
    from broden.cli import app

    def fail(store: object) -> None:
        raise RunnerError("a build worker process died (test)")

    monkeypatch.setattr(inspect, "store_info", fail)
    monkeypatch.setattr("broden.store.open_store", lambda *a, **k: object())
    r = CliRunner().invoke(app, ["info", "some.zarr"])
    assert r.exit_code == 2
    assert r.stderr == "error: a build worker process died (test)\n"
