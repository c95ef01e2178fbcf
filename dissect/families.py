"""Model specs by family: a timm, Hugging Face transformers or OpenCLIP model by name, built
with the family's own loading code (so pretrained weights come the way its users expect
when there is a network, and local files always work), with the preprocessing the model's
own config states.

``timm:NAME`` / ``timm:NAME:pretrained``
    ``timm.create_model(NAME, pretrained=...)`` (random weights, or timm's hub download);
    ``--weights FILE`` for a local checkpoint. Preprocessing from
    ``timm.data.resolve_data_config(model=...)`` (its pretrained config).
``hf:MODEL_ID_OR_DIR``
    ``transformers.AutoModel.from_pretrained`` (a local ``save_pretrained`` folder works
    offline; ``revision`` pins a hub revision); for a vision-language model (CLIP, SigLIP)
    its ``vision_model``. Preprocessing from the image processor saved with the model
    (``AutoImageProcessor``), when there is one.
``open_clip:ARCH`` / ``open_clip:ARCH:PRETRAINED_TAG_OR_FILE``
    the visual tower (``model.visual``) of ``open_clip.create_model_and_transforms``.
    Preprocessing from the tower's ``image_mean``, ``image_std`` and ``image_size``.

The libraries are optional extras (``pip install 'broden[timm]'``, ``[hf]``,
``[open_clip]``); a missing one is one error line naming the extra. Broden's images are
square (the store's S×S), so a model's centre crop is a plain resize here; the recorded
:class:`ModelPreprocessing` says what the model's own pipeline would have done.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from broden.dissect.errors import DissectError

#: spec prefix → (the module it needs, the extra that installs it)
FAMILIES: dict[str, tuple[str, str]] = {
    "timm": ("timm", "broden[timm]"),
    "hf": ("transformers", "broden[hf]"),
    "open_clip": ("open_clip", "broden[open_clip]"),
}

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class ModelPreprocessing:
    """What the model's own config says its input is: ``input_size`` (square side),
    ``mean``/``std`` of the RGB channels in [0, 1] units, the resize ``interpolation``,
    whether its pipeline centre-crops (``crop``), and where this came from (``source``).
    A field the config does not state is None."""

    source: str
    input_size: int | None = None
    mean: Triple | None = None
    std: Triple | None = None
    interpolation: str | None = None
    crop: bool | None = None


def family_of(spec: str) -> str | None:
    """The family a spec names (``timm``, ``hf``, ``open_clip``), or None."""
    head = spec.split(":", 1)[0]
    return head if head in FAMILIES and ":" in spec else None


def _library(family: str) -> ModuleType:
    module, extra = FAMILIES[family]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DissectError(
            f"--model {family}:...: needs the {module} package, which is not installed "
            f"({e}); install it with pip install '{extra}' (after the torch build for your "
            "machine: README, Installing)"
        ) from None


def _triple(value: Any) -> Triple | None:
    try:
        t = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (t[0], t[1], t[2]) if len(t) == 3 else None


#: PIL's resampling filters by number, as image processors store them (``resample: 3``)
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _side(value: Any) -> int | None:
    """A square side from an int, (C, H, W), (H, W) or an HF size dict (or ``SizeDict``)."""
    if isinstance(value, int) and value > 0:
        return value
    if value is not None and not isinstance(value, dict | list | tuple):
        value = {k: getattr(value, k, None) for k in ("height", "shortest_edge", "width")}
    if isinstance(value, dict):
        for key in ("height", "shortest_edge", "width"):
            if isinstance(value.get(key), int):
                return int(value[key])
        return None
    if isinstance(value, list | tuple) and value and all(isinstance(v, int) for v in value):
        return int(value[-1])
    return None


def load_family(spec: str, revision: str | None = None) -> tuple[nn.Module, ModelPreprocessing]:
    """Build the model a family spec names (see the module docstring) and read its
    preprocessing; :class:`DissectError` with one line for a missing library, an unknown
    name, or a failed download."""
    family = family_of(spec)
    if family is None:
        raise DissectError(f"--model {spec!r}: not a timm:, hf: or open_clip: spec")
    lib = _library(family)
    _, rest = spec.split(":", 1)
    try:
        if family == "timm":
            return _timm(lib, rest)
        if family == "hf":
            return _hf(lib, rest, revision)
        return _open_clip(lib, rest)
    except DissectError:
        raise
    except Exception as e:  # the library's own errors: unknown names, no network, ...
        first = str(e).splitlines()[0] if str(e) else ""
        raise DissectError(f"--model {spec}: {type(e).__name__}: {first}") from None


def _timm(timm: ModuleType, rest: str) -> tuple[nn.Module, ModelPreprocessing]:
    name, _, flag = rest.partition(":")
    if flag not in ("", "pretrained"):
        raise DissectError(f"--model timm:{rest}: expected timm:NAME or timm:NAME:pretrained")
    model = timm.create_model(name, pretrained=flag == "pretrained")
    cfg = timm.data.resolve_data_config({}, model=model)
    crop = cfg.get("crop_pct")
    return model, ModelPreprocessing(
        "timm pretrained config",
        _side(cfg.get("input_size")),
        _triple(cfg.get("mean")),
        _triple(cfg.get("std")),
        cfg.get("interpolation"),
        None if crop is None else float(crop) < 1.0,
    )


def _hf(
    transformers: ModuleType, rest: str, revision: str | None
) -> tuple[nn.Module, ModelPreprocessing]:
    kwargs = {} if revision is None else {"revision": revision}
    model = transformers.AutoModel.from_pretrained(rest, **kwargs)
    if hasattr(model, "vision_model") and hasattr(model, "text_model"):
        model = model.vision_model  # CLIP, SigLIP: the image tower
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(rest, **kwargs)
    except Exception:  # noqa: BLE001 - no image processor saved with the model
        return model, ModelPreprocessing("none saved with the model")
    crop = getattr(proc, "do_center_crop", None)
    size = getattr(proc, "crop_size", None) if crop else getattr(proc, "size", None)
    resample = getattr(proc, "resample", None)
    return model, ModelPreprocessing(
        f"the image processor of {Path(rest).name or rest}",
        _side(size),
        _triple(getattr(proc, "image_mean", None)),
        _triple(getattr(proc, "image_std", None)),
        _filter_name(resample),
        None if crop is None else bool(crop),
    )


def _filter_name(resample: Any) -> str | None:
    """An image processor's ``resample`` (a PIL filter number or enum) by name."""
    if resample is None:
        return None
    if isinstance(resample, int) and not isinstance(resample, bool):
        return PIL_FILTERS.get(int(resample), str(resample))
    return str(getattr(resample, "name", resample)).lower()


def _open_clip(open_clip: ModuleType, rest: str) -> tuple[nn.Module, ModelPreprocessing]:
    arch, _, tag = rest.partition(":")
    created = open_clip.create_model_and_transforms(arch, pretrained=tag or None)
    visual = created[0].visual
    return visual, ModelPreprocessing(
        "the OpenCLIP visual tower",
        _side(getattr(visual, "image_size", None)),
        _triple(getattr(visual, "image_mean", None)),
        _triple(getattr(visual, "image_std", None)),
        "bicubic",
        True,
    )
