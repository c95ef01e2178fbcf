"""Segmenting an image with a layer's detector units (TPAMI §3.10; NetDissect-Lite issue
#9; ``broden segment``): :func:`segment` runs the dissected model, named by the caller and
checked against the recorded fingerprint
(:meth:`~broden.dissect.runner.ModelRunner.from_record`; the spec in ``summary.json`` is
never imported or called), on one image, thresholds each detector unit's upsampled map
with the dissection's per-unit threshold, and paints the masks over the image with their
concept labels (higher-IoU units on top).

>>> segment("street.jpg", "out/layer4", model="dissect.zoo:resnet18", weights="r18.pth",
...         out="street-layer4.png")                                  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from broden.dissect.errors import DissectError
from broden.dissect.experiments.common import ExperimentWarning
from broden.dissect.experiments.rotation import unit_transform_from_key
from broden.dissect.results import layer_dirs
from broden.dissect.summary import SUMMARY, LayerSummary, ModelRecord
from broden.removal import store_containing

if TYPE_CHECKING:
    import torch
    from torch import nn

    from broden.store import BrodenStore


@dataclass
class Segmentation:
    """Detector units' masks on one image, best IoU first.

    ``image`` (H, W, 3) uint8 as given; ``masks`` (K, H, W) bool; per unit ``units``,
    ``labels``, ``categories``, ``ious``, ``colors`` (RGB); ``top`` (H, W): index into
    the units of the mask drawn on top at each pixel (the unit with the higher IoU; −1:
    none); ``overlay`` (H, W, 3) uint8, the picture written by :meth:`save`.
    """

    layer: str
    image: np.ndarray
    units: np.ndarray
    labels: list[str]
    categories: list[str]
    ious: np.ndarray
    masks: np.ndarray
    colors: list[tuple[int, int, int]]
    top: np.ndarray
    overlay: np.ndarray

    def coverage(self) -> np.ndarray:
        """Fraction of the image each unit's mask covers."""
        if not len(self.units):
            return np.zeros(0)
        return self.masks.reshape(len(self.units), -1).mean(axis=1)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the overlay as a PNG of the image's size."""
        from PIL import Image

        p = check_png_out(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(self.overlay).save(p, format="PNG")
        except OSError as e:
            raise DissectError(f"--out {p}: cannot write the overlay ({e})") from None
        return p

    def format(self) -> str:
        if not len(self.units):
            return f"{self.layer}: no detector units to draw"
        lines = []
        for i, cov in enumerate(self.coverage()):
            lines.append(
                f"unit {int(self.units[i])}: {self.labels[i]} ({self.categories[i]}, IoU "
                f"{self.ious[i]:.3f}) covers {cov:.1%} of the image"
            )
        return "\n".join(lines)


def _results_layer(result_dir: str | os.PathLike[str]) -> Path:
    dirs = layer_dirs(result_dir)
    if len(dirs) > 1:
        raise DissectError(
            f"{result_dir} holds {len(dirs)} layers ({', '.join(d.name for d in dirs)}); "
            "give one layer folder, e.g. --results "
            f"{Path(result_dir) / dirs[0].name}"
        )
    return dirs[0]


def _detector_units(directory: Path, min_iou: float, top: int | None) -> list[dict[str, Any]]:
    try:
        with open(directory / "units.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError, csv.Error) as e:  # ValueError: not UTF-8
        raise DissectError(
            f"{directory}: cannot read units.csv ({type(e).__name__}: {e})"
        ) from None
    units: list[dict[str, Any]] = []
    for n, r in enumerate(rows, 2):
        try:
            iou = float(r["iou"])
            unit = int(r["unit"])
            label, category = str(r["label"] or ""), str(r["category"] or "")
        except (KeyError, ValueError, TypeError):
            raise DissectError(
                f"{directory}/units.csv: line {n} is not a unit row (unit, label, category, "
                "iou); re-run `broden dissect` for this layer"
            ) from None
        if iou > min_iou and label:
            units.append({"unit": unit, "label": label, "category": category, "iou": iou})
    units.sort(key=lambda d: (-float(d["iou"]), int(d["unit"])))
    return units if top is None else units[:top]


def check_png_out(path: str | os.PathLike[str]) -> Path:
    """``path`` as the overlay file to write: not a folder, and not inside a broden store;
    :class:`DissectError` naming it otherwise. An existing file there is replaced."""
    p = Path(path)
    if p.is_dir():
        raise DissectError(f"--out {p} is a folder; give the PNG file to write")
    store = store_containing(p.parent)
    if store is not None:
        raise DissectError(f"--out {p} is inside the store {store}; write it elsewhere")
    return p


def _thresholds(directory: Path) -> np.ndarray:
    path = directory / "thresholds.npy"
    try:
        thr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DissectError(f"{directory}: cannot read thresholds.npy ({e})") from None
    if not isinstance(thr, np.ndarray) or thr.ndim != 1 or thr.dtype.kind not in "fi":
        raise DissectError(
            f"{path}: not one threshold per unit (a 1-D array of numbers); re-run "
            "`broden dissect` for this layer"
        )
    return thr


def _load_image(
    image: str | os.PathLike[str] | int | np.ndarray,
    store: BrodenStore | str | os.PathLike[str] | None,
    summary: LayerSummary,
) -> tuple[np.ndarray, np.ndarray]:
    """(the image as given, the image at the store's size)."""
    from broden.imaging import resize_image

    size = summary.store.image_size
    st: BrodenStore | None = None
    if store is not None:
        from broden.store import BrodenStore, open_store

        st = store if isinstance(store, BrodenStore) else open_store(Path(store))
        if st.fingerprint() != summary.store.fingerprint:
            warnings.warn(
                f"the store {st.path} is not the one these results were computed on "
                f"({summary.store.path})",
                ExperimentWarning,
                stacklevel=3,
            )
        size = st.image_size
    is_int = isinstance(image, (int, np.integer)) and not isinstance(image, bool)
    digits = isinstance(image, str) and image.strip().isdigit() and not Path(image).exists()
    index = int(image) if is_int or (digits and st is not None) else None  # type: ignore[arg-type]
    if index is not None:
        if st is None:
            raise DissectError(f"image {index}: a store index needs the store (--store)")
        if not 0 <= index < len(st):
            raise DissectError(f"image {index}: the store {st.path} has images 0-{len(st) - 1}")
        img = st.image(index)
    elif isinstance(image, np.ndarray):
        img = image
    else:
        from broden.adapters.base import SampleError
        from broden.adapters.decode import read_image

        path = Path(image)  # type: ignore[arg-type]
        if not path.exists():
            hint = " (a store index needs --store)" if str(image).strip().isdigit() else ""
            raise DissectError(f"image {path}: no such file{hint}")
        if path.is_dir():
            raise DissectError(f"image {path}: a folder, not an image file")
        try:
            img = read_image(path)
        except SampleError as e:
            raise DissectError(f"image {e}") from None
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise DissectError(f"expected an H×W×3 uint8 RGB image, got {img.shape} {img.dtype}")
    return img, resize_image(np.ascontiguousarray(img), size)


def _upsample(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(K, h, w) → (K, H, W) with the tally's bilinear arithmetic (half-pixel centres,
    clamped edges: ``F.interpolate(mode="bilinear", align_corners=False)``)."""
    import torch

    from broden.dissect.tally import bilinear_weights

    r0, r1, _, rl1 = bilinear_weights(maps.shape[1], height)
    c0, c1, _, cl1 = bilinear_weights(maps.shape[2], width)
    dt, dev = maps.dtype, maps.device
    rl1_t = torch.tensor(rl1, dtype=dt, device=dev)
    cl1_t = torch.tensor(cl1, dtype=dt, device=dev)
    cols_a = maps[:, :, torch.as_tensor(c0, device=dev)]
    cols_b = maps[:, :, torch.as_tensor(c1, device=dev)]
    rows = (1 - cl1_t) * cols_a + cl1_t * cols_b
    top = rows[:, torch.as_tensor(r0, device=dev), :]
    bot = rows[:, torch.as_tensor(r1, device=dev), :]
    return (1 - rl1_t)[:, None] * top + rl1_t[:, None] * bot


def _palette(k: int) -> list[tuple[int, int, int]]:
    import colorsys

    base = [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
        (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
        (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
    ]  # fmt: skip
    out = base[:k]
    for i in range(len(out), k):  # golden-angle hues beyond the fixed set
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def _overlay(
    image: np.ndarray,
    masks: np.ndarray,
    top: np.ndarray,
    colors: list[tuple[int, int, int]],
    legend: list[str],
) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    out = image.astype(np.float32)
    if len(colors):
        pal = np.array(colors, np.float32)
        painted = top >= 0
        out[painted] = 0.45 * out[painted] + 0.55 * pal[top[painted]]
        # outline each drawn region in its full color
        edge = np.zeros_like(painted)
        edge[1:, :] |= top[1:, :] != top[:-1, :]
        edge[:-1, :] |= top[1:, :] != top[:-1, :]
        edge[:, 1:] |= top[:, 1:] != top[:, :-1]
        edge[:, :-1] |= top[:, 1:] != top[:, :-1]
        edge &= painted
        out[edge] = pal[top[edge]]
    pic = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    visible = [i for i in range(len(colors)) if masks[i].any()]
    if not visible:
        return np.asarray(pic)
    h, w = image.shape[:2]
    size = max(8, min(h, w) // 28)
    try:
        font: Any = ImageFont.load_default(size=size)
    except (TypeError, OSError, AttributeError):
        font = ImageFont.load_default()
    layer = Image.new("RGBA", pic.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    line = size + max(2, size // 4)
    pad = max(2, size // 3)
    fit = max(1, (h - 2 * pad) // line)
    shown = visible if len(visible) <= fit else visible[: max(1, fit - 1)]
    texts = [legend[i] for i in shown]
    if len(shown) < len(visible):
        texts.append(f"+{len(visible) - len(shown)} more")
    text_w = max(draw.textlength(t, font=font) for t in texts)
    box_w = int(min(w, pad * 3 + size + text_w))
    box_h = int(min(h, pad * 2 + line * len(texts)))
    draw.rectangle([0, 0, box_w, box_h], fill=(0, 0, 0, 150))
    for j, t in enumerate(texts):
        y = pad + j * line
        if j < len(shown):
            draw.rectangle([pad, y, pad + size, y + size], fill=(*colors[shown[j]], 255))
        draw.text((pad * 2 + size, y), t, fill=(255, 255, 255, 255), font=font)
    pic = Image.alpha_composite(pic.convert("RGBA"), layer).convert("RGB")
    return np.asarray(pic)


def segment(
    image: str | os.PathLike[str] | int | np.ndarray,
    result_dir: str | os.PathLike[str],
    *,
    store: BrodenStore | str | os.PathLike[str] | None = None,
    top: int | None = None,
    min_iou: float | None = None,
    model: str | nn.Module | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
    out: str | os.PathLike[str] | None = None,
) -> Segmentation:
    """Segment ``image`` with the detector units of a dissected layer (TPAMI §3.10).

    ``image`` is a file (any size; resized to the store's image size as the dissection's
    inputs were, bilinear with antialiasing, no crop), an H×W×3 uint8 array, or a store
    image index (with ``store``). ``model`` (a spec, as given to ``broden dissect``, or the
    module) with ``weights`` is run and the layer captured, with the input prepared as
    ``result_dir``'s summary records (normalisation, input size, layout); it must be the
    dissected model (its fingerprint is checked), and it is required: the spec recorded in
    ``summary.json`` is never imported or called. Every detector unit
    (best IoU > ``min_iou``, default the run's IoU threshold; the ``top`` best if given)
    has its map upsampled to the image's size with the engine's bilinear arithmetic and
    thresholded with its ``thresholds.npy`` value. Where masks overlap, the unit with
    the higher IoU is drawn on top. ``out``: also write the overlay PNG there.

    >>> seg = segment("street.jpg", "out/layer4", model="dissect.zoo:resnet18",
    ...               out="street.png")                               # doctest: +SKIP
    >>> seg.labels[:3], seg.masks.shape                               # doctest: +SKIP
    """
    import torch

    from broden.dissect.data import resolve_device
    from broden.dissect.runner import ModelRunner
    from broden.dissect.tally import threshold_for_dtype
    from broden.dissect.transforms import apply_transform

    if out is not None:
        check_png_out(out)  # before any work
    directory = _results_layer(result_dir)
    summary = LayerSummary.read(directory)
    rec = summary.model
    if not isinstance(rec, ModelRecord):
        what = rec.activations
        raise DissectError(
            f"{directory} holds results of precomputed activations ({what}), not of a model: "
            "segmenting runs the model on the image, so it needs results of "
            "`broden dissect --model ...`"
        )
    if top is not None and top < 1:
        raise DissectError(f"--top must be at least 1, got {top}")
    thr_iou = summary.settings.iou_threshold
    min_iou = thr_iou if min_iou is None else float(min_iou)
    if model is None:
        used = f" with --weights {rec.weights!r}" if rec.weights else ""
        raise DissectError(
            f"segmenting runs the dissected model on the image: name it with --model SPEC "
            f"(and --weights FILE), as `broden dissect` was given it (recorded: {rec.spec!r}"
            f"{used}; checked against the recorded fingerprint). The spec in {directory}/"
            f"{SUMMARY} is not loaded: a results folder is data, never code"
        )
    layer = summary.layer
    thresholds = _thresholds(directory)
    picked = _detector_units(directory, min_iou, top)
    transform = unit_transform_from_key(summary.settings.transform)
    original, resized = _load_image(image, store, summary)

    runner = ModelRunner.from_record(rec, summary.settings, resolve_device(device), model, weights)
    images = torch.from_numpy(np.array(resized[None])).to(runner.device)
    with torch.inference_mode(), runner.capture([layer], "the image") as forward:
        maps = apply_transform(transform, forward(images)[layer], layer)
    if maps.shape[1] != len(thresholds):
        raise DissectError(
            f"layer {layer!r} has {maps.shape[1]} units but {directory}/thresholds.npy has "
            f"{len(thresholds)}"
        )
    H, W = original.shape[:2]
    units = np.array([d["unit"] for d in picked], np.int64)
    if len(units) and not (units.min() >= 0 and units.max() < len(thresholds)):
        raise DissectError(
            f"{directory}/units.csv names unit {int(units.max())} of a layer with "
            f"{len(thresholds)} units; the folder mixes files of different runs"
        )
    masks = np.zeros((len(units), H, W), bool)
    if len(units):
        sel = maps[0, torch.as_tensor(units, device=maps.device)]
        thr = threshold_for_dtype(thresholds[units], sel.dtype).to(sel.device)
        step = max(1, (1 << 25) // max(1, H * W))  # bound the float memory
        for a in range(0, len(units), step):
            up = _upsample(sel[a : a + step], H, W)
            masks[a : a + step] = (up > thr[a : a + step, None, None]).cpu().numpy()
    colors = _palette(len(units))
    topmap = np.full((H, W), -1, np.int64)
    for i in range(len(units) - 1, -1, -1):  # lowest IoU first, highest painted last
        topmap[masks[i]] = i
    legend = [f"{d['label']} (unit {d['unit']}, IoU {d['iou']:.2f})" for d in picked]
    seg = Segmentation(
        layer=layer,
        image=original,
        units=units,
        labels=[d["label"] for d in picked],
        categories=[d["category"] for d in picked],
        ious=np.array([d["iou"] for d in picked], np.float64),
        masks=masks,
        colors=colors,
        top=topmap,
        overlay=_overlay(original, masks, topmap, colors, legend),
    )
    if out is not None:
        seg.save(out)
    return seg
