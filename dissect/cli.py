"""``broden layers``, ``broden dissect`` and ``broden report`` (the ``dissect`` command
group): thin typer wrappers over :func:`broden.dissect.layers.list_layers`,
:func:`broden.dissect.dissect`, :func:`broden.dissect.score_activations` and
:func:`broden.dissect.report.write_report`. Importing this module imports only typer;
torch is imported when a command runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from broden.cli.common import user_errors

PANEL = "Dissection"

ROTATE_HELP = (
    "rotation experiment: also dissect the layers with their channels rotated by a "
    "Haar-random rotation drawn from this seed (results in OUT/rotated/seed<S>-alpha<A>/, "
    "table and plot in OUT/<layer>/rotation.csv, .png, .svg)"
)
ALPHA_HELP = (
    "with --rotate: rotation power along the geodesic from the identity (0) to the full "
    "rotation (1); repeat for several (default 1.0)"
)

SIGNIFICANCE_HELP = (
    "significance level of each unit's label: units.csv's significant is 1 where the "
    "label's Benjamini-Hochberg adjusted p-value is at most this (0 < ALPHA < 1)"
)

DISTRIBUTED_HELP = (
    "this process is one rank of a torchrun launch (`torchrun --nproc-per-node N "
    "$(which broden) dissect ... --distributed`): each rank dissects its own shards, "
    "rank 0 writes the results"
)


@user_errors
def dissect_command(
    store: Annotated[Path, typer.Argument(help="the Broden store (a .zarr folder)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="results folder (OUT/<layer>/)")],
    model: Annotated[
        str | None,
        typer.Option(
            help="timm:NAME[:pretrained], hf:MODEL_ID_OR_DIR, open_clip:ARCH[:TAG], "
            "torchvision:NAME, package.module:factory (e.g. dissect.zoo:resnet18), a "
            "TorchScript file or a torch.export .pt2 file"
        ),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="state dict to load (torch.load weights_only=True)")
    ] = None,
    revision: Annotated[
        str | None,
        typer.Option(help="the hub revision (branch, tag or commit) of an hf: model"),
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
    sources: Annotated[
        list[str] | None,
        typer.Option(
            "--sources",
            help="only the images of these sources (meta/source; comma-separated, "
            "repeatable; default: every image)",
        ),
    ] = None,
    quantile: Annotated[float, typer.Option(help="top quantile of activations per unit")] = 0.005,
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
    significance_alpha: Annotated[
        float, typer.Option(metavar="ALPHA", help=SIGNIFICANCE_HELP)
    ] = 0.05,
    batch_size: Annotated[int, typer.Option(help="images per batch")] = 32,
    workers: Annotated[int, typer.Option(help="data loader worker processes")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N]")] = "auto",
    normalize: Annotated[
        str | None,
        typer.Option(
            help="a preset (imagenet, clip, inception, none) or MEAN,MEAN,MEAN/STD,STD,STD "
            "in [0, 1] units (@255: in 0-255); default: the model's own (timm, hf, open_clip), "
            "else imagenet"
        ),
    ] = None,
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
    layout: Annotated[
        str,
        typer.Option(
            help="output layout: auto, nchw or nhwc (4-D outputs), tokens (3-D outputs are "
            "transformer tokens B×T×D; auto takes them for tokens only when T is a square "
            "grid after at most 8 class/register tokens); per layer: LAYER=LAYOUT entries, "
            "comma-separated, with an optional bare default (nhwc,blocks.3=tokens)"
        ),
    ] = "auto",
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
    report: Annotated[
        bool, typer.Option(help="write OUT/report.html (an offline HTML report) at the end")
    ] = True,
    force: Annotated[
        bool, typer.Option(help="recompute even when OUT holds results with the same key")
    ] = False,
    rotate: Annotated[int | None, typer.Option(metavar="SEED", help=ROTATE_HELP)] = None,
    alpha: Annotated[list[float] | None, typer.Option("--alpha", help=ALPHA_HELP)] = None,
    amp: Annotated[
        bool,
        typer.Option(
            help="mixed precision for the model's forward pass (float16 on CUDA, "
            "bfloat16 on the CPU); off: exact float32"
        ),
    ] = False,
    distributed: Annotated[bool, typer.Option(help=DISTRIBUTED_HELP)] = False,
    formulas: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="explain each unit by a formula of up to N concepts joined by OR, AND, "
            "AND NOT (OUT/<layer>/formulas.json, formulas.csv); 0: off",
        ),
    ] = 0,
    beam: Annotated[int, typer.Option(metavar="B", help="beam width of --formulas")] = 5,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Dissect layers of a model (or precomputed activations) against STORE."""
    from broden.dissect.dispatch import run_dissection
    from broden.dissect.settings import DissectSettings, parse_size

    settings = DissectSettings(
        concepts=tuple(concepts or ()),
        sources=tuple(sources or ()),
        quantile=quantile,
        quantile_method=quantile_method,
        unit_area=unit_area,
        iou_threshold=iou_threshold,
        alpha=significance_alpha,
        top_k=top_k,
        batch_size=batch_size,
        workers=workers,
        device=device,
        normalize=normalize,
        input_size=input_size,
        cache_activations=cache_activations,
        memory_budget=parse_size(memory_budget),
        layout=layout,
        prefix_tokens=prefix_tokens,
        amp=amp,
        legacy_csv=legacy_csv,
        force=force,
        progress=not quiet,
        distributed=distributed,
        formulas=formulas,
        beam=beam,
    )
    done = run_dissection(
        store,
        settings,
        out=out,
        model=model,
        activations=activations,
        layers=layer or [],
        weights=weights,
        revision=revision,
        thresholds=thresholds,
        rotate=rotate,
        alphas=alpha,
    )
    results, rotations = done.results, done.rotations
    if distributed:
        from broden.dissect.distributed import is_main, shutdown

        main = is_main()
        shutdown()
        if not main:
            return  # rank 0 reports
    from broden.dissect.report import has_random_weights

    if has_random_weights(model, None if weights is None else str(weights)):
        typer.echo(
            f"note: {model} has random weights here (no --weights): expect few "
            "detectors; pass --weights FILE (a state dict) to dissect a trained network"
        )
    for r in results:
        for note in r.notes:
            typer.echo(note)
        typer.echo(r.headline())
    for rot in rotations:
        typer.echo(rot.format())
    typer.echo(f"results: {out}")
    if report:
        from broden.dissect.report import write_report

        page = write_report(  # the layers of this run: OUT may hold others, of other stores
            out,
            store=store,
            top_k=top_k,
            device=device,
            batch_size=batch_size,
            progress=not quiet,
            layers=[r.directory.name for r in results],
        )
        typer.echo(f"report: {page}")


@user_errors
def report_command(
    out: Annotated[Path, typer.Argument(help="a results folder written by broden dissect")],
    top_k: Annotated[int, typer.Option(help="top images per unit")] = 10,
    store: Annotated[
        Path | None,
        typer.Option(help="the dissected store (default: the path in each summary.json)"),
    ] = None,
    masks: Annotated[
        bool,
        typer.Option(help="draw the units' masks (from each layer's topmaps.npy)"),
    ] = True,
    model: Annotated[
        str | None,
        typer.Option(
            help="for results without topmaps.npy (an earlier broden): the dissected model's "
            "spec, re-run on the top images; checked against the recorded fingerprint (the "
            "spec in summary.json is never loaded)"
        ),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="its state dict, as given to broden dissect")
    ] = None,
    tile_size: Annotated[int, typer.Option(help="pixels per image in the strips")] = 112,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N]")] = "auto",
    batch_size: Annotated[int, typer.Option(help="images per batch")] = 32,
    layer: Annotated[
        list[str] | None,
        typer.Option("--layer", "-l", help="only this layer folder of OUT (repeatable)"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Write OUT/report.html: per layer the detector headline, a bar chart by category
    and every unit's top images with its mask (offline: images in OUT/report_files/)."""
    from broden.dissect.report import write_report

    page = write_report(
        out,
        store=store,
        top_k=top_k,
        masks=masks,
        tile_size=tile_size,
        device=device,
        batch_size=batch_size,
        progress=not quiet,
        layers=layer or None,
        model=model,
        weights=weights,
    )
    typer.echo(f"report: {page}")


@user_errors
def layers_command(
    model: Annotated[str, typer.Argument(help="a model spec, as broden dissect --model takes")],
    weights: Annotated[Path | None, typer.Option(help="its state dict")] = None,
    revision: Annotated[str | None, typer.Option(help="the hub revision of an hf: model")] = None,
    input_size: Annotated[
        int | None, typer.Option(help="the dummy input's size (default: the model's, or 224)")
    ] = None,
    normalize: Annotated[str | None, typer.Option(help="as broden dissect --normalize")] = None,
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
        revision=revision,
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
    """Add the ``layers``, ``dissect`` and ``report`` commands to ``app``."""
    app.command("layers", rich_help_panel=PANEL)(layers_command)
    app.command("dissect", rich_help_panel=PANEL)(dissect_command)
    app.command("report", rich_help_panel=PANEL)(report_command)
