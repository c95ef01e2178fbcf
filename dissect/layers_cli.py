"""``broden layers MODEL_SPEC``: a thin typer wrapper over
:func:`broden.dissect.layers.list_layers` (torch is imported when the command runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from broden.cli.common import user_errors

PANEL = "Dissection"


@user_errors
def layers_command(
    model: Annotated[str, typer.Argument(help="a model spec, as broden dissect --model takes")],
    weights: Annotated[Path | None, typer.Option(help="its state dict")] = None,
    input_size: Annotated[
        int | None, typer.Option(help="the dummy input's size (default: the model's, or 224)")
    ] = None,
    normalize: Annotated[str, typer.Option(help="as broden dissect --normalize")] = "imagenet",
    layout: Annotated[str, typer.Option(help="as broden dissect --layout")] = "auto",
    prefix_tokens: Annotated[
        int | None, typer.Option(help="as broden dissect --prefix-tokens")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON list, for scripts")] = False,
) -> None:
    """List a model's layers: each module's output shape and how broden dissect would read
    it (units × h×w, layout, prefix tokens), from one dummy forward pass."""
    from broden.dissect.layers import list_layers

    infos = list_layers(
        model,
        weights,
        input_size=input_size,
        normalize=normalize,
        layout=layout,
        prefix_tokens=prefix_tokens,
    )
    if as_json:
        typer.echo(json.dumps([i.to_json() for i in infos], indent=1))
        return
    rows = [(i.name, i.kind, _shape(i.shape, i.batch_first), i.reading) for i in infos]
    head = ("layer", "module", "output", "read by broden dissect as")
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(3)]
    for r in [head, *rows]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])


def _shape(shape: tuple[int, ...] | None, batch_first: bool) -> str:
    """An output shape for the table: ``B×512×7×7`` (B: the dummy batch), ``-`` for none."""
    if shape is None:
        return "-"
    if not batch_first or not shape:
        return "×".join(map(str, shape)) or "()"
    return "×".join(["B", *map(str, shape[1:])])


def register(app: typer.Typer) -> None:
    """Add the ``layers`` command to ``app``."""
    app.command("layers", rich_help_panel=PANEL)(layers_command)
