"""What every command group of the ``broden`` command line shares: the error handling,
and the arguments that mean the same everywhere."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from broden.errors import BrodenError

F = TypeVar("F", bound=Callable[..., Any])


def _click_exceptions(name: str) -> tuple[type[BaseException], ...]:
    """Click's exception ``name`` as raised under typer: typer may carry its own copy of
    click (``typer._click``) besides the ``click`` distribution."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(dict.fromkeys(found))


CLICK_USAGE = _click_exceptions("UsageError")
CLICK_NO_ARGS = _click_exceptions("NoArgsIsHelpError")
CLICK_ABORT = _click_exceptions("Abort")


def echo_error(message: str) -> None:
    """One ``error:`` line on stderr (continuation lines indented)."""
    typer.echo("error: " + message.strip().replace("\n", "\n  "), err=True)


def user_errors(fn: F) -> F:
    """Turn the errors a user can cause (:class:`~broden.errors.BrodenError`) into one
    ``error:`` line on stderr and exit status 2; Ctrl-C into ``interrupted``, exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrodenError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except CLICK_USAGE as e:  # typer.BadParameter raised by a command's own checks
            echo_error(e.format_message())  # type: ignore[attr-defined]
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


StoreArg = Annotated[Path, typer.Argument(help="path of a broden store (a .zarr folder)")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
