"""What every command group of the ``broden`` command line shares: the error handling,
and the arguments that mean the same everywhere."""

from __future__ import annotations

import errno
import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
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


#: the parameters of a command that name what it writes, the first one given is blamed
#: for an error of the file system that names no file (zarr's writes name none)
WRITTEN_PARAMETERS = ("out", "store")

#: what to do about an error of the file system, by ``errno``; every one ends with "run the
#: same command again": an interrupted build or add resumes where it stopped
_FIXES = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (the disk quota is used up)",
    errno.EROFS: "the file system is read-only: remount it writable or write somewhere else",
    errno.EACCES: "check the permissions there (or write somewhere else)",
    errno.EPERM: "check the permissions there (or write somewhere else)",
}


def os_error_message(error: OSError, written: Path | None = None) -> str:
    """One line for an error of the file system: the file it names (else ``written``,
    what the command writes), the operating system's reason, and for a full disk, a
    read-only file system or a permission what to do before running the command again.

    >>> import errno, os
    >>> os_error_message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), Path("s.zarr"))
    's.zarr: No space left on device; free some space, then run the same command again (an interrupted build or add resumes where it stopped)'
    """  # noqa: E501
    where = error.filename if error.filename is not None else written
    reason = error.strerror or str(error) or type(error).__name__
    line = f"{where}: {reason}" if where is not None else reason
    if error.filename2 is not None:
        line += f" (and {error.filename2})"
    fix = _FIXES.get(error.errno) if error.errno is not None else None
    if fix:
        line += (
            f"; {fix}, then run the same command again (an interrupted build or add resumes "
            "where it stopped)"
        )
    return line


def _written(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Path | None:
    """The path a command writes (its first :data:`WRITTEN_PARAMETERS` given)."""
    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        return None
    for name in WRITTEN_PARAMETERS:
        if isinstance(bound.get(name), (str, Path)):
            return Path(bound[name])
    return None


def user_errors(fn: F) -> F:
    """Turn the errors a user can cause into one ``error:`` line on stderr and exit status 2:
    :class:`~broden.errors.BrodenError`, and every error of the file system that escaped
    (:class:`OSError`: a full disk, a read-only file system, permissions, a name too long,
    a path through a file; :func:`os_error_message`). Ctrl-C is ``interrupted``, exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrodenError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except OSError as e:
            echo_error(os_error_message(e, _written(fn, args, kwargs)))
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
