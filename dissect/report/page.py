"""The report page: per layer its headline, chart, settings and unit table with the
strips of top images, rendered from the templates into one offline ``report.html``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from broden.adapters.categories import category_colors
from broden.dissect.errors import DissectError
from broden.dissect.report.chart import BAR_ORDER, bar_chart, display_name, has_random_weights
from broden.dissect.report.images import (
    CONCEPT_OUTLINE,
    DIM,
    FORMULA_OUTLINE,
    GAP,
    UNIT_OUTLINE,
    TileCache,
    concept_mask,
    coverage,
    draw_masks,
    formula_image_mask,
    strip,
    unit_masks,
)
from broden.dissect.report.maps import (
    GivenModel,
    ShownLayer,
    activation_maps,
    check_maxima,
    model_maps,
    rerun_key,
    saved_maps,
)
from broden.dissect.report.read import (
    UnitRow,
    check_store,
    open_layer_store,
    read_layer,
)
from broden.dissect.results import layer_dirs
from broden.dissect.summary import (
    TOPMAPS,
    ActivationsRecord,
    CategoryDetectors,
    ConceptsRecord,
    ModelRecord,
)
from broden.dissect.transforms import UnitTransform
from broden.removal import REPORT_FILES, refusal, remove_ours

if TYPE_CHECKING:
    from torch import nn

    from broden.store import BrodenStore


REPORT = "report.html"


FILES = "report_files"


_CHUNK_UNITS = 32  # units whose masks are upsampled together


_JPEG_QUALITY = 80


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{v:02x}" for v in rgb)


def _url(*parts: str) -> str:
    """A relative URL from path parts (each percent-encoded)."""
    return "/".join(quote(p) for p in parts)


def _layer_context(
    job: ShownLayer,
    files: Path,
    idx: int,
    tile_size: int,
    progress: bool,
) -> dict[str, Any]:
    """Render one layer's chart and strips; return what the template needs."""
    from tqdm import tqdm

    layer = job.layer
    directory = files / layer.directory.name

    def url(path: Path) -> str:  # as seen from report.html, once files/ is report_files/
        return _url(FILES, layer.directory.name, path.name)

    directory.mkdir(parents=True, exist_ok=True)
    s = layer.summary
    store_cats = [c.name for c in job.store.categories]
    cats = list(s.concepts.categories or store_cats)
    colors = category_colors(list(dict.fromkeys(BAR_ORDER + tuple(cats))))
    chart = directory / "detectors.svg"
    has_chart = bar_chart(layer, chart, colors, BAR_ORDER + tuple(cats))

    S = job.store.image_size
    tile = min(tile_size, S)
    width = max(1, round(tile / 112))  # outline width in tile pixels
    images = TileCache(job.store, tile)
    digits = max(4, len(str(len(layer.units) - 1)))
    t = layer.iou_threshold
    sources, source_ids = job.store.meta("source"), job.store.meta("source_id")

    ids = {name: cid for (name, _), cid in layer.concepts.items()}

    def render(
        chunk: list[UnitRow], tiles: list[np.ndarray], concepts: list[Any], formulas: list[Any]
    ) -> None:
        """Draw and save the strips of a chunk of units."""
        cover = None
        if job.maps is not None:
            units = [r.unit for r in chunk]
            masks = unit_masks(job.maps[units], layer.thresholds[units], S)
            cover = coverage(masks.cpu().numpy(), tile)
        for j, r in enumerate(chunk):
            base = directory / f"unit-{r.unit:0{digits}d}"
            ucover = None if cover is None else cover[j]
            drawn = draw_masks(tiles[j], ucover, UNIT_OUTLINE, None, width)
            strip(drawn).save(f"{base}.jpg", quality=_JPEG_QUALITY)
            if formulas[j] is not None:
                drawn = draw_masks(
                    tiles[j], coverage(formulas[j], tile), FORMULA_OUTLINE, None, width
                )
                strip(drawn).save(f"{base}-formula.jpg", quality=_JPEG_QUALITY)
            if concepts[j] is not None:
                masks, frame = concepts[j]
                ccover = coverage(masks, tile)
                drawn = draw_masks(tiles[j], ccover, CONCEPT_OUTLINE, frame, width)
                strip(drawn).save(f"{base}-concept.jpg", quality=_JPEG_QUALITY)

    rows = []
    bar = tqdm(
        total=len(layer.units), desc=f"report {layer.name}", disable=not progress, leave=False
    )
    for a in range(0, len(layer.units), _CHUNK_UNITS):
        chunk = layer.units[a : a + _CHUNK_UNITS]
        tiles: list[np.ndarray] = []
        concepts: list[tuple[np.ndarray, np.ndarray] | None] = []
        formulas: list[np.ndarray | None] = []
        for r in chunk:
            shown = [int(i) for i in job.shown[r.unit]]
            tiles.append(np.stack([images.tile(i) for i in shown]))
            cid = layer.concepts.get((r.label, r.category)) if r.label else None
            if cid is None:
                concepts.append(None)
            else:
                cm = [concept_mask(*images.labels(i), cid, S) for i in shown]
                concepts.append((np.stack([m for m, _ in cm]), np.array([w for _, w in cm])))
            uf = layer.formulas.get(r.unit)
            formulas.append(
                None
                if uf is None
                else np.stack(
                    [formula_image_mask(*images.labels(i), uf.formula, ids, S) for i in shown]
                )
            )
            base = f"unit-{r.unit:0{digits}d}"
            rows.append(
                {
                    "unit": r.unit,
                    "label": r.label,
                    "display": display_name(r.label, r.category) if r.label else "",
                    "category": r.category,
                    "color": colors.get(r.category, "#777777"),
                    "iou": r.iou,
                    "formula": uf.text if uf else "",
                    "formula_iou": uf.iou if uf else 0.0,
                    "formula_strip": url(Path(f"{base}-formula.jpg")) if uf else None,
                    "detector": bool(r.label) and r.iou > t,
                    "not_significant": r.significant is False,
                    "p_value": r.p_value,
                    "images": shown,
                    "sources": [f"{i}: {sources[i]} {source_ids[i]}" for i in shown],
                    "strip": url(Path(f"{base}.jpg")),
                    "concept_strip": url(Path(f"{base}-concept.jpg")) if cid else None,
                    "width": len(shown) * tile + (len(shown) - 1) * GAP,
                    "height": tile,
                }
            )
        render(chunk, tiles, concepts, formulas)
        bar.update(len(chunk))
    bar.close()
    none = CategoryDetectors(
        detectors=0, unique_top_label=0, units_over_threshold=0, unique_per_category=0
    )
    categories = [
        {
            "name": c,
            "color": colors.get(c, "#777777"),
            "detectors": s.per_category.get(c, none).detectors,
            "unique": s.per_category.get(c, none).unique_top_label,
            "unique_per_category": s.per_category.get(c, none).unique_per_category,
        }
        for c in sorted(cats, key=lambda c: BAR_ORDER.index(c) if c in BAR_ORDER else 99)
    ]
    model, settings = s.model, s.settings
    is_model = isinstance(model, ModelRecord)
    weights = model.weights if isinstance(model, ModelRecord) else None
    return {
        "id": f"layer-{idx}",
        "name": layer.name,
        "directory": layer.directory.name,
        "units": len(layer.units),
        "detectors": layer.detectors,
        "significant": s.significant_detectors,
        "alpha": f"{settings.alpha:g}" if settings.alpha is not None else "",
        "unique": layer.unique.get("top_label", 0),
        "unique_per_category": layer.unique.get("per_category", 0),
        "iou_threshold": f"{t:g}",
        "categories": categories,
        "chart": url(chart) if has_chart else None,
        "rows": rows,
        "k": job.k,
        "masks": job.maps is not None,
        "has_formulas": bool(layer.formulas),
        "notes": job.notes,
        "source": model.spec if isinstance(model, ModelRecord) else model.activations,
        "source_kind": "model" if is_model else "activations",
        "weights": weights,
        "random_weights": is_model and has_random_weights(s.source, weights),
        "store": s.store.path,
        "images": s.store.images,
        "shape": "×".join(str(v) for v in s.activation_shape),
        "settings": {
            "quantile": settings.quantile,
            "thresholds": settings.thresholds,
            "quantile method": settings.quantile_method,
            "unit area": settings.unit_area,
            "IoU threshold": f"{t:g}",
            "significance level": (
                f"α = {settings.alpha:g} (Benjamini-Hochberg per unit)"
                if settings.alpha is not None and s.significant_detectors is not None
                else "not computed"
            ),
            "normalize": _normalization(settings.normalize, model),
            "input size": settings.input_size,
            "read as": _reading(settings.layout_used, settings.prefix_tokens_used),
            "transform": settings.transform,
            "sources": ", ".join(settings.sources or []) or "all",
            "concepts": _concept_set(s.concepts),
            "amp": "on" if settings.amp else "off",
            "formulas": f"length ≤ {settings.formulas}, beam {settings.beam} (plain IoU)"
            if settings.formulas
            else "off",
        },
    }


def _normalization(name: str | None, model: ModelRecord | ActivationsRecord) -> str | None:
    """The normalisation's name and, for a model, the numbers used."""
    if not isinstance(model, ModelRecord):
        return name
    mean, std = (", ".join(f"{v:.4g}" for v in t) for t in model.normalize)
    order = " (BGR input)" if model.channels == "bgr" else ""
    return f"{name or 'recorded'}: mean {mean}, std {std}{order}"


def _reading(layout: str | None, prefix: int | None) -> str | None:
    """How the layer's output was read (None: not recorded, results of an older broden)."""
    if layout is None:
        return None
    if not prefix:
        return layout
    return f"{layout}, {prefix} prefix token{'s' if prefix != 1 else ''} dropped"


def _older_results(
    job: ShownLayer,
    saved: int,
    given: GivenModel | None,
    transforms: Mapping[str, UnitTransform],
) -> bool:
    """A layer whose ``topmaps.npy`` is missing or holds fewer than ``job.k`` maps per unit
    (``saved``): True when the ``given`` model is to be re-run for it; otherwise its maps
    come from the activation file, or it is shown with the saved maps or without masks,
    with a note saying why and how to get them."""
    rec = job.layer.summary.model
    transform = job.layer.summary.settings.transform
    if isinstance(rec, ActivationsRecord) and not saved:
        job.maps = None
        activation_maps(job, transforms)
        return False
    if isinstance(rec, ModelRecord) and given is not None:
        if transform and job.layer.name not in transforms:
            job.maps = None
            job.notes.append(
                f"unit masks not drawn: the layer was dissected through the unit transform "
                f"{transform!r}, which the report was not given for re-running the model"
            )
            return False
        job.maps = None
        return True
    how = (
        "pass --model SPEC (and --weights FILE) naming the dissected model, which is checked "
        "against the recorded fingerprint, or run `broden dissect` again with --force"
        if isinstance(rec, ModelRecord)
        else "run `broden dissect` again with --force"
    )
    if saved:
        job.notes.append(
            f"{TOPMAPS} holds the maps of {saved} top images per unit (`broden dissect "
            f"--top-k {saved}`); showing {saved}, not {job.k}: to draw more, {how}"
        )
        job.k = saved
    else:
        there = (job.layer.directory / TOPMAPS).is_file()
        why = "cannot be used" if there else "is missing (results of an earlier broden)"
        job.notes.append(
            f"unit masks not drawn: {job.layer.directory.name}/{TOPMAPS} {why}; to draw them, {how}"
        )
    return False


def _concept_set(c: ConceptsRecord) -> str:
    """The concept selection of a run, as the report's settings table shows it."""
    fp = f" (set {c.fingerprint})" if c.fingerprint else ""
    return f"{c.selection}: {c.count} concepts{fp}"


def write_report(
    out_dir: str | os.PathLike[str],
    *,
    store: str | os.PathLike[str] | BrodenStore | None = None,
    top_k: int = 10,
    masks: bool = True,
    transforms: Mapping[str, UnitTransform] | None = None,
    device: str = "auto",
    batch_size: int = 32,
    tile_size: int = 112,
    progress: bool = False,
    layers: Sequence[str] | None = None,
    model: str | nn.Module | None = None,
    weights: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (and ``out_dir/report_files/``) for every layer in the
    results folder ``out_dir`` (or the layer folders named in ``layers``); return the page's
    path.

    ``store``: the dissected store (default: the path recorded in each layer's
    summary.json; its fingerprint must match). ``top_k``: top images per unit (at most
    the number recorded in topk.npz). ``masks=False``: show the top images without unit
    masks. The masks are drawn from each layer's ``topmaps.npy`` (the maps the dissection
    saw); nothing named in the results folder is imported or run. ``model`` (a spec or a
    module) and ``weights``: for results without ``topmaps.npy`` (an earlier broden) or
    with fewer maps per unit than ``top_k``, the model to run the top images through,
    refused unless it has the recorded fingerprint; without it those layers are shown
    without masks (or with fewer images), and the page says how to get them.
    ``transforms``: layer → the unit transform the layer was dissected through (e.g. a
    rotation), re-applied to the recomputed activations of such a re-run; a transformed
    layer without one is shown without unit masks. ``tile_size``: pixels per image in the
    strips (at most the store's image size).
    """
    import torch

    from broden.store import BrodenStore

    out = Path(out_dir)
    if top_k < 1:
        raise DissectError(f"--top-k must be at least 1, got {top_k}")
    if tile_size < 8:
        raise DissectError(f"--tile-size must be at least 8 pixels, got {tile_size}")
    dirs = layer_dirs(out, itself=False)
    why = refusal(out / FILES, REPORT_FILES)  # before any work: replaced at the end
    if why is not None:
        raise DissectError(f"refusing to replace {out / FILES}: {why}")
    if layers is not None:
        wanted = list(dict.fromkeys(layers))
        missing = [la for la in wanted if la not in {d.name for d in dirs}]
        if missing:
            raise DissectError(
                f"{out} has no dissected layer {missing[0]!r}; it has {[d.name for d in dirs]}"
            )
        dirs = [d for d in dirs if d.name in wanted]
    results = [read_layer(d) for d in dirs]
    transforms = dict(transforms or {})
    stores: dict[str, BrodenStore] = {}
    jobs: list[ShownLayer] = []
    for la in results:
        if isinstance(store, BrodenStore):
            st = store
        else:
            path = str(store if store is not None else la.summary.store.path)
            if path not in stores:
                stores[path] = open_layer_store(path, la, store is not None)
            st = stores[path]
        check_store(st, la)
        recorded = la.top_indices.shape[1]
        job = ShownLayer(la, st, min(top_k, recorded))
        if top_k > recorded:
            job.notes.append(
                f"{recorded} top images per unit were recorded; showing {recorded}, not {top_k}"
            )
        jobs.append(job)

    # unit maps of the shown images: topmaps.npy; for older results the activation file
    # or one re-run per (model, store) of the model the user named
    given = None if model is None else GivenModel(model, weights)
    groups: dict[str, list[ShownLayer]] = {}
    for j in jobs:
        if not masks:
            j.notes.append("unit masks not drawn (masks turned off)")
            continue
        saved = saved_maps(j)
        if saved >= j.k:
            continue
        if _older_results(j, saved, given, transforms):
            groups.setdefault(rerun_key(j), []).append(j)
    for group in groups.values():
        assert given is not None
        model_maps(group, transforms, given, device, batch_size)
    for j in jobs:
        check_maxima(j)

    files = out / FILES
    staging = out / (FILES + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with torch.inference_mode():
            contexts = [
                _layer_context(j, staging, n, tile_size, progress) for n, j in enumerate(jobs)
            ]
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    page = _render(
        {
            "title": f"Network dissection: {out.resolve().name}",
            "out": str(out),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "layers": contexts,
            "random_weights": any(c["random_weights"] for c in contexts),
            "outline_unit": _hex(UNIT_OUTLINE),
            "outline_concept": _hex(CONCEPT_OUTLINE),
            "outline_formula": _hex(FORMULA_OUTLINE),
            "formulas": any(c["has_formulas"] for c in contexts),
            "dim": f"{DIM:.0%}",
        }
    )
    remove_ours(files, REPORT_FILES)  # only the files of an earlier report
    staging.rename(files)
    target = out / REPORT
    tmp = out / (REPORT + ".partial")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return target


def _render(context: dict[str, Any]) -> str:
    """The page from the templates: autoescaped; the CSS and the script are our own files,
    inlined verbatim, and the Content-Security-Policy allows that one script (by its hash),
    local images and nothing else."""
    import base64
    import hashlib

    from jinja2 import Environment, FileSystemLoader, StrictUndefined
    from markupsafe import Markup

    templates = Path(__file__).parent / "templates"
    env = Environment(
        loader=FileSystemLoader(templates),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["iou"] = lambda v: f"{v:.3f}"
    script = "\n" + (templates / "report.js").read_text(encoding="utf-8") + "\n"
    css = (templates / "report.css").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return env.get_template("report.html.j2").render(
        **context,
        css=Markup(css),  # noqa: S704 - our own stylesheet, not data
        script=Markup(script),  # noqa: S704 - our own script, not data
        script_hash=f"sha256-{digest}",
    )
