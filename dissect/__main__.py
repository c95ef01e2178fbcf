"""``python -m dissect``: the dissection commands of the ``broden`` command line
(``dissect``, ``report``, ``compare``, ``segment``; the same typer commands,
registered by :func:`dissect.cli.register`), for launchers that start a module rather
than a script, such as ``torchrun``::

    python -m dissect dissect STORE --out OUT --model dissect.zoo:resnet18 --layer layer4
    torchrun --nproc-per-node 2 -m dissect dissect STORE --out OUT \\
        --model dissect.zoo:resnet18 --layer layer4 --distributed

``python -m dissect dissect ...`` is ``broden dissect ...`` (same options, messages and
exit status).
"""

from __future__ import annotations

import typer

from dissect.cli import register

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Dissect networks against a Broden store (the dissection commands of `broden`).",
    pretty_exceptions_enable=False,
)
register(app)


def main() -> None:
    app(prog_name="python -m dissect")


if __name__ == "__main__":
    main()
