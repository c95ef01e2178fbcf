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

from importlib.metadata import EntryPoint, entry_points

import typer

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


def make_app() -> tuple[typer.Typer, list[str]]:
    """The ``broden`` app with every command group that loads, and one message per group
    that does not."""
    app = typer.Typer(
        add_completion=False,
        no_args_is_help=True,
        help="Build the Broden concept dataset from public sources and dissect networks "
        "against it.",
        pretty_exceptions_enable=False,
    )
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
