"""The ``broden`` command line: thin typer wrappers over the library functions.

Nothing in the library imports this package. The commands come in groups, each a
``register(app)`` function found through the ``broden.commands`` entry-point group
(broden's own: ``store`` = :mod:`broden.cli.store`, ``dissect`` =
:mod:`broden.dissect.cli`, ``experiments`` = :mod:`broden.dissect.experiments.cli`;
third-party packages add theirs the same way). A group that cannot be loaded is named
on stderr, with the reason, every time ``broden`` starts; the other groups still work.

Every failure a user can cause (a bad config, a missing source folder, a damaged
store, an unknown layer) ends with one readable message on stderr and exit status
2 (:func:`broden.cli.common.user_errors`); ``broden validate`` exits 1 when it finds
problems.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from broden.cli.common import CLICK_ABORT, CLICK_NO_ARGS, CLICK_USAGE, echo_error

#: the entry-point group of command groups: ``name = "package.module:register"``
COMMANDS_GROUP = "broden.commands"
#: the order of broden's own groups in ``broden --help``
OWN_GROUPS = ("store", "dissect", "experiments")


def command_groups() -> list[EntryPoint]:
    """The installed command groups: broden's own first (in :data:`OWN_GROUPS` order), then
    the others by name."""

    def key(ep: EntryPoint) -> tuple[int, str]:
        own = ep.dist is not None and ep.dist.name == "broden" and ep.name in OWN_GROUPS
        return (OWN_GROUPS.index(ep.name), "") if own else (len(OWN_GROUPS), ep.name)

    return sorted(entry_points(group=COMMANDS_GROUP), key=key)


class OneLineErrors(TyperGroup):
    """The ``broden`` group: a usage error (an unknown option, a missing argument, a value
    out of range) is one ``error:`` line on stderr and exit status 2, like every other
    error a user can cause, instead of click's boxed panel."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except CLICK_NO_ARGS as e:
            e.show()  # type: ignore[attr-defined]  # `broden` alone: the help, not an error
            code = 0
        except CLICK_USAGE as e:
            ctx = getattr(e, "ctx", None)
            command = ctx.command_path if ctx is not None else (prog_name or "broden")
            echo_error(f"{e.format_message()} (see `{command} --help`)")  # type: ignore[attr-defined]
            code = 2
        except CLICK_ABORT:
            typer.echo("interrupted", err=True)
            code = 130
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _version(value: bool) -> None:
    if value:
        from broden.build.summary import package_version

        typer.echo(f"broden {package_version()}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Build the Broden concept dataset from public sources and dissect networks against it."""


def make_app() -> tuple[typer.Typer, list[str]]:
    """The ``broden`` app with every command group that loads, and one message per group
    that does not."""
    app = typer.Typer(
        cls=OneLineErrors,
        add_completion=True,
        no_args_is_help=True,
        help="Build the Broden concept dataset from public sources and dissect networks "
        "against it.",
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    problems = []
    for ep in command_groups():
        try:
            ep.load()(app)
        except Exception as e:  # a group's import can fail in any way: name it, go on
            first = str(e).splitlines()[0] if str(e) else ""
            problems.append(
                f"error: command group {ep.name!r} ({ep.value}) cannot be loaded: "
                f"{type(e).__name__}: {first}; its commands are not available"
            )
    if not problems and not app.registered_commands:
        problems.append(
            f"error: no broden commands are installed (no {COMMANDS_GROUP!r} entry points): "
            "install the package, e.g. `pip install -e .` in a clone"
        )
    return app, problems


app, load_problems = make_app()


def main() -> None:
    """The ``broden`` script."""
    for line in load_problems:
        typer.echo(line, err=True)
    app(prog_name="broden")
