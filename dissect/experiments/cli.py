"""``broden compare`` and ``broden segment`` (the ``experiments`` command group): thin
typer wrappers over :func:`broden.dissect.experiments.compare` and
:func:`broden.dissect.experiments.segment`. Importing this module imports only typer;
torch and matplotlib are imported when a command runs. (The rotation experiment is
``broden dissect --rotate``.)"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from broden.cli.common import user_errors

PANEL = "Experiments"


@user_errors
def compare_command(
    results: Annotated[
        list[str],
        typer.Argument(
            help="dissect output folders (every layer) or layer folders; NAME=DIR names "
            "a series (default label: model/layer from summary.json)",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for comparison.csv/.png/.svg")],
    iou_threshold: Annotated[
        float | None,
        typer.Option(help="re-score every layer at this IoU threshold (default: each run's)"),
    ] = None,
) -> None:
    """Compare layers and models: unique detectors and the share of units per category."""
    from broden.dissect.experiments import ExperimentWarning, compare

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentWarning)  # printed below instead
        res = compare(results, out, iou_threshold=iou_threshold)
    for w in res.warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(res.format())
    typer.echo(f"comparison: {res.csv}, {', '.join(str(p) for p in res.figures)}")


@user_errors
def segment_command(
    image: Annotated[
        str,
        typer.Argument(
            help="an image file (any size), or a store image index with --store",
            show_default=False,
        ),
    ],
    results: Annotated[
        Path, typer.Option("--results", "-r", help="a dissected layer folder: OUT/LAYER")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="overlay PNG to write")],
    top: Annotated[
        int | None, typer.Option(help="only the N detector units with the highest IoU")
    ] = None,
    min_iou: Annotated[
        float | None,
        typer.Option(help="units with IoU above this (default: the run's IoU threshold)"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="the dissected model's spec, as given to broden dissect (required: the "
            "spec in summary.json is never loaded; checked against its fingerprint)"
        ),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="its state dict, as given to broden dissect")
    ] = None,
    store: Annotated[Path | None, typer.Option(help="the store that IMAGE indexes into")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N]")] = "auto",
) -> None:
    """Segment an image with a layer's detector units (each unit's mask in its own
    color, labelled with its concept; higher-IoU units on top), running the dissected
    model named by --model (and --weights)."""
    from broden.dissect.experiments import ExperimentWarning, segment

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExperimentWarning)
        seg = segment(
            image,
            results,
            store=store,
            top=top,
            min_iou=min_iou,
            model=model,
            weights=weights,
            device=device,
            out=out,
        )
    for w in caught:
        if issubclass(w.category, ExperimentWarning):
            typer.echo(f"warning: {w.message}", err=True)
    typer.echo(seg.format())
    typer.echo(f"overlay: {out}")


def register(app: typer.Typer) -> None:
    """Add the ``compare`` and ``segment`` commands to ``app``."""
    app.command("compare", rich_help_panel=PANEL)(compare_command)
    app.command("segment", rich_help_panel=PANEL)(segment_command)
