"""The store commands of ``broden``: ``build``, ``add``, ``info``, ``concepts``,
``validate``, ``upgrade``, ``adapters``, ``export-legacy`` and ``config-schema``, thin typer
wrappers over :mod:`broden`'s library functions (imported when a command runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from broden.cli.common import StoreArg, user_errors

PANEL = "Stores"


@user_errors
def build(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="build config (YAML or TOML), or a bundled one by name: sample, broden1; "
            "default: the bundled sample sources"
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="store to write")] = Path(
        "broden-sample.zarr"
    ),
    workers: Annotated[int, typer.Option("--workers", "-j", min=1, help="worker processes")] = 1,
    strict: Annotated[
        bool, typer.Option(help="fail on the first unreadable sample instead of skipping it")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="delete an existing store first")] = False,
    dask: Annotated[
        str | None,
        typer.Option(
            help="run the tasks on a Dask cluster: a scheduler ADDRESS, or local:N for N "
            "local worker processes (needs broden\\[dask])"
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Build a store from the sources of CONFIG (resumes an interrupted build of OUT)."""
    from broden.build import build as run_build
    from broden.config import load_config, resolve_config, sample_config_path

    cfg = load_config(resolve_config(config) if config is not None else sample_config_path())
    summary = run_build(
        cfg,
        out,
        workers=workers,
        strict=strict,
        overwrite=overwrite,
        progress=not quiet,
        dask=dask,
    )
    typer.echo(summary.format())


@user_errors
def add(
    store: StoreArg,
    config: Annotated[Path, typer.Argument(help="config (YAML or TOML) of the sources to add")],
    workers: Annotated[int, typer.Option("--workers", "-j", min=1, help="worker processes")] = 1,
    strict: Annotated[
        bool, typer.Option(help="fail on the first unreadable sample instead of skipping it")
    ] = False,
    dask: Annotated[
        str | None,
        typer.Option(help="run the tasks on a Dask cluster: a scheduler ADDRESS, or local:N"),
    ] = None,
    backup: Annotated[
        bool,
        typer.Option(
            help="copy STORE to STORE.orig first (compare them with `broden concepts --diff`)"
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Add the sources of CONFIG to the complete STORE: existing concept ids, names and
    pixels never change; new images are appended, new concepts get new ids (resumable)."""
    from broden.config import load_config, resolve_config
    from broden.extend import add as run_add

    summary = run_add(
        store,
        load_config(resolve_config(config)),
        workers=workers,
        strict=strict,
        progress=not quiet,
        dask=dask,
        backup=backup,
    )
    typer.echo(summary.format())


@user_errors
def info(
    store: StoreArg,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Summarise a store: sizes, sources, concepts per category, completion, additions, an
    unfinished build or add."""
    from broden.inspect import format_info, path_info

    data = path_info(store)
    typer.echo(json.dumps(data, indent=2) if as_json else format_info(data))


@user_errors
def concepts(
    store: Annotated[
        Path | None, typer.Argument(help="path of a broden store (a .zarr folder)")
    ] = None,
    category: Annotated[str | None, typer.Option(help="only concepts of this category")] = None,
    source: Annotated[
        str | None, typer.Option(help="only concepts with labels from this source")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    tree: Annotated[
        bool, typer.Option("--tree", help="the hierarchy: levels, parts under their objects")
    ] = False,
    write_set: Annotated[
        Path | None,
        typer.Option(
            "--write-set",
            help="write the listed concepts as a concept-set file (.csv, or .yaml) for "
            "`broden dissect --concepts FILE`",
        ),
    ] = None,
    diff: Annotated[
        tuple[Path, Path] | None,
        typer.Option(
            "--diff", help="OLD NEW: what changed between two stores' concept tables, by id"
        ),
    ] = None,
) -> None:
    """List the concept table of a store (or compare two with --diff OLD NEW)."""
    from broden.inspect import concept_records, format_concepts, format_tree
    from broden.store import open_store

    if diff is not None:
        from broden.concept_diff import diff_concepts

        if store is not None:
            raise typer.BadParameter("give either STORE or --diff OLD NEW, not both")
        d = diff_concepts(open_store(diff[0]), open_store(diff[1]))
        typer.echo(json.dumps(d.to_json(), indent=2) if as_json else d.format())
        return
    if store is None:
        raise typer.BadParameter("missing STORE (or --diff OLD NEW)")
    s = open_store(store)
    if category is not None and category not in [c.name for c in s.categories]:
        raise typer.BadParameter(
            f"no category {category!r}; the store has {[c.name for c in s.categories]}"
        )
    known_sources = [x.name for x in s.attrs.sources]
    if source is not None and source not in known_sources:
        raise typer.BadParameter(f"no source {source!r}; the store has {known_sources}")
    if tree:
        typer.echo(format_tree(s, category))
        return
    records = [r for r in concept_records(s, category) if source is None or source in r["sources"]]
    if write_set is not None:
        from broden.concept_set import write_concept_set

        ids = {r["id"] for r in records}
        path = write_concept_set(write_set, [c for c in s.concepts if c.id in ids], str(store))
        typer.echo(f"{path}: {len(ids)} concepts")
        return
    typer.echo(json.dumps(records, indent=2) if as_json else format_concepts(records))


@user_errors
def validate(
    store: StoreArg,
    quick: Annotated[
        bool, typer.Option(help="metadata and array shapes only, without reading the data")
    ] = False,
) -> None:
    """Check a store: schema, completion, shard digests, label ids. Exit 1 on problems."""
    from broden.store import upgrade_hint, validate_store

    problems = validate_store(store, check_data=not quick)
    hint = upgrade_hint(store)
    if problems:
        typer.echo(f"{store}: {len(problems)} problem(s):", err=True)
        for p in problems:
            typer.echo(f"  - {p}", err=True)
        if hint:
            typer.echo(f"note: {hint}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{store}: valid")
    if hint:
        typer.echo(f"note: {hint}")


@user_errors
def upgrade(store: StoreArg) -> None:
    """Make a complete STORE written by an earlier broden readable by xarray: record its
    arrays' dimension names and write its consolidated metadata. Metadata only: no data is
    rewritten, the shard digests and the fingerprint stay as they are; running it again
    changes nothing."""
    from broden.store import upgrade_store

    changes = upgrade_store(store)
    for line in changes:
        typer.echo(f"  {line}")
    typer.echo(f"{store}: " + (f"upgraded ({len(changes)} changes)" if changes else "up to date"))


@user_errors
def adapters() -> None:
    """List the installed source adapters and the categories they supply."""
    from broden.adapters import SourceError, available_adapters, get_adapter_class

    for name, target in available_adapters().items():
        try:
            cls = get_adapter_class(name)
        except SourceError as e:  # a broken plugin must not hide the others
            typer.echo(f"{name:<22} {'(cannot be loaded)':<48} {target}")
            typer.echo(f"warning: {e}", err=True)
            continue
        kinds = ", ".join(f"{c} ({k})" for c, k in cls.kinds.items()) or "(set by config)"
        typer.echo(f"{name:<22} {kinds:<48} {target}")


@user_errors
def export_legacy(
    store: StoreArg,
    out_dir: Annotated[
        Path, typer.Argument(help="folder to write the broden1 layout into (new or empty)")
    ],
    jpeg_quality: Annotated[
        int, typer.Option("--jpeg-quality", min=1, max=100, help="JPEG quality of the images")
    ] = 95,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Write STORE in the released Broden layout (index.csv, label.csv, category.csv,
    c_*.csv, images and R+256·G label PNGs), the layout NetDissect(-Lite) loaders read."""
    from broden.legacy import export_legacy as run_export

    summary = run_export(store, out_dir, jpeg_quality=jpeg_quality, progress=not quiet)
    typer.echo(summary.format())


@user_errors
def config_schema() -> None:
    """Print the JSON Schema of build configs."""
    from broden.config import BuildConfig

    typer.echo(json.dumps(BuildConfig.model_json_schema(), indent=2))


def register(app: typer.Typer) -> None:
    """Add the store commands (build, add, info, concepts, validate, upgrade, adapters,
    export-legacy, config-schema) to ``app``."""
    app.command("build", rich_help_panel=PANEL)(build)
    app.command("add", rich_help_panel=PANEL)(add)
    app.command("info", rich_help_panel=PANEL)(info)
    app.command("concepts", rich_help_panel=PANEL)(concepts)
    app.command("validate", rich_help_panel=PANEL)(validate)
    app.command("upgrade", rich_help_panel=PANEL)(upgrade)
    app.command("adapters", rich_help_panel=PANEL)(adapters)
    app.command("export-legacy", rich_help_panel=PANEL)(export_legacy)
    app.command("config-schema", rich_help_panel=PANEL)(config_schema)
