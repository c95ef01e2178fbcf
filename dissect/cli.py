"""``broden dissect``: a thin typer wrapper over :func:`dissect.dissect` and
:func:`dissect.score_activations`. Importing this module imports only typer; torch is
imported when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _concept_args(values: list[str] | None) -> list[str] | None:
    return [v for v in values or [] if v.strip()] or None


def register(app: typer.Typer) -> None:
    """Add the ``dissect`` command to ``app``."""
    from broden.cli import user_errors

    @app.command("dissect")
    @user_errors
    def dissect_command(
        store: Annotated[Path, typer.Argument(help="the Broden store (a .zarr folder)")],
        out: Annotated[Path, typer.Option("--out", "-o", help="results folder (OUT/<layer>/)")],
        model: Annotated[
            str | None,
            typer.Option(
                help="torchvision:NAME, package.module:factory (e.g. "
                "dissect.zoo:resnet18), a TorchScript file or a torch.export .pt2 file"
            ),
        ] = None,
        weights: Annotated[
            Path | None, typer.Option(help="state dict to load (torch.load weights_only=True)")
        ] = None,
        layer: Annotated[
            list[str] | None,
            typer.Option(
                "--layer",
                "-l",
                help="layer (dotted module name); repeat for several; "
                "with --activations, the layer's name (default: the file's stem)",
            ),
        ] = None,
        activations: Annotated[
            Path | None,
            typer.Option(help="precomputed activations N×U×h×w (.npy or Zarr) instead of a model"),
        ] = None,
        concepts: Annotated[
            list[str] | None,
            typer.Option(
                help="only these categories / concepts (comma-separated, repeatable, "
                "or a file with one name per line)"
            ),
        ] = None,
        quantile: Annotated[
            float, typer.Option(help="top quantile of activations per unit")
        ] = 0.005,
        quantile_method: Annotated[
            str, typer.Option(help="exact (numpy.quantile, linear) or ndl (NetDissect-Lite)")
        ] = "exact",
        thresholds: Annotated[
            Path | None,
            typer.Option(
                help="per-unit thresholds: a .npy file, or a folder with <layer>.npy or "
                "<layer>/thresholds.npy (a previous run's output)"
            ),
        ] = None,
        unit_area: Annotated[
            str, typer.Option(help="IoU denominator's unit area: original, lite or plain")
        ] = "original",
        iou_threshold: Annotated[float, typer.Option(help="a detector has IoU above this")] = 0.04,
        batch_size: Annotated[int, typer.Option(help="images per batch")] = 32,
        workers: Annotated[int, typer.Option(help="data loader worker processes")] = 2,
        device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N]")] = "auto",
        normalize: Annotated[
            str, typer.Option(help="imagenet, none, or MEAN,MEAN,MEAN/STD,STD,STD in [0, 1] units")
        ] = "imagenet",
        input_size: Annotated[
            int | None, typer.Option(help="resize images to this size for the model")
        ] = None,
        cache_activations: Annotated[
            str,
            typer.Option(
                help="auto: one forward pass when the activations fit "
                "--memory-budget, else two; yes; no"
            ),
        ] = "auto",
        memory_budget: Annotated[
            str, typer.Option(help="memory for cached activations, e.g. 2GiB")
        ] = "2GiB",
        layout: Annotated[str, typer.Option(help="4-D output layout: auto, nchw or nhwc")] = "auto",
        prefix_tokens: Annotated[
            int | None,
            typer.Option(
                help="class/register tokens before the patch grid (default: T - floor(sqrt(T))^2)"
            ),
        ] = None,
        legacy_csv: Annotated[
            bool, typer.Option(help="also write NetDissect-Lite's tally.csv")
        ] = False,
        top_k: Annotated[int, typer.Option(help="top images per unit for the report")] = 10,
        force: Annotated[
            bool, typer.Option(help="recompute even when OUT holds results with the same key")
        ] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    ) -> None:
        """Dissect layers of a model (or precomputed activations) against STORE."""
        from dissect.errors import DissectError

        common: dict[str, Any] = dict(
            out=out,
            concepts=_concept_args(concepts),
            quantile=quantile,
            quantile_method=quantile_method,
            unit_area=unit_area,
            iou_threshold=iou_threshold,
            batch_size=batch_size,
            device=device,
            top_k=top_k,
            legacy_csv=legacy_csv,
            layout=layout,
            prefix_tokens=prefix_tokens,
            force=force,
            progress=not quiet,
        )
        if activations is not None:
            if model is not None:
                raise DissectError("give either --model or --activations, not both")
            if layer and len(layer) > 1:
                raise DissectError("--activations holds one layer; give at most one --layer")
            from dissect.pipeline import score_activations

            results = [
                score_activations(
                    store,
                    activations,
                    layer=layer[0] if layer else None,
                    thresholds=thresholds,
                    workers=workers,
                    **common,
                )
            ]
        else:
            if model is None:
                raise DissectError("give --model SPEC (with --layer NAME) or --activations FILE")
            if not layer:
                raise DissectError("name the layers to dissect with --layer (repeatable)")
            from dissect.pipeline import dissect

            results = list(
                dissect(
                    store,
                    model,
                    layer,
                    weights=weights,
                    thresholds=thresholds,
                    workers=workers,
                    normalize=normalize,
                    input_size=input_size,
                    cache_activations=cache_activations,
                    memory_budget=memory_budget,
                    **common,
                ).values()
            )
        for r in results:
            for note in r.notes:
                typer.echo(note)
            typer.echo(r.headline())
        typer.echo(f"results: {out}")
