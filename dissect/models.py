"""Loading the model to dissect and preparing its input.

Model specs (``--model``):

``torchvision:NAME``
    ``torchvision.models.get_model(NAME)`` with random weights (``torchvision:NAME:WEIGHTS``
    for torchvision's pretrained weights, e.g. ``torchvision:resnet18:IMAGENET1K_V1``;
    downloaded by torchvision). torchvision is an optional dependency; without it,
    ``dissect.zoo:resnet18`` with ``--weights`` loads torchvision's resnet18 weights.
``timm:NAME[:pretrained]``, ``hf:MODEL_ID_OR_DIR``, ``open_clip:ARCH[:TAG_OR_FILE]``
    a model of those libraries, loaded their way, with the preprocessing its config
    states (:mod:`broden.dissect.families`; optional extras).
``dissect.zoo:NAME``
    the built-in model zoo, :mod:`broden.dissect.zoo` (``dissect.zoo`` is the short name of
    that module in a spec; ``broden.dissect.zoo:NAME`` is the same model).
``package.module:factory``
    ``factory()`` from an importable module, returning an ``nn.Module``; modules in the
    current folder are importable, as with ``python -m`` (the folder is put on the import
    path).
a TorchScript file (``torch.jit.save``; ``.pt``, ``.pth``, ``.ts``, ...)
    loaded with ``torch.jit.load``; only ``--layer output[.N]`` can be captured.
a ``torch.export`` file (``.pt2``)
    loaded with ``torch.export.load`` and unflattened, so submodules keep their names
    and take hooks; its example input fixes the input size (and the batch size, unless
    it was exported with a dynamic batch dimension: then batches are padded to it).

``--weights FILE``: a state dict loaded with ``torch.load(weights_only=True)`` (a
``{"state_dict": ...}`` or ``{"model": ...}`` checkpoint is unwrapped, a ``module.``
prefix from DataParallel is stripped), strictly: missing or unexpected keys fail.

Input: images (uint8 RGB) are scaled to [0, 1], resized when the model wants another
size (bilinear, antialiased when shrinking), then normalised: the model's own mean and
std (a timm, hf or open_clip model), else ``imagenet`` (mean 0.485, 0.456, 0.406, std
0.229, 0.224, 0.225); ``--normalize`` overrides with a preset (``clip``, ``inception``,
``caffe`` with BGR channels, ``none``) or explicit ``M,M,M/S,S,S`` (:func:`parse_normalize`).
A transformer whose patch size the model states must get an input size that is a
multiple of it (:func:`check_patch_grid`).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from broden.dissect.errors import DissectError
from broden.dissect.families import ModelPreprocessing, family_of, load_family

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LoadedModel:
    """A model ready to run: eval mode, with what the dissection records about it."""

    module: nn.Module
    spec: str
    weights: str | None
    fingerprint: str  # digest of the architecture spec and every parameter and buffer
    input_size: int | None = None  # its own input size (exported for, or from its config)
    batch_size: int | None = None  # fixed batch size of an exported model
    prefix_tokens: int | None = None  # class/distillation/register tokens, from its config
    preprocessing: ModelPreprocessing | None = None  # what a timm/hf/open_clip config says
    patch_size: int | None = None  # a transformer's square patch side, where it says


@dataclass(frozen=True)
class Normalization:
    """What the model sees: ``(x - mean) / std`` for pixel values ``x`` in [0, 1], its
    input channels in ``channels`` order (``bgr``: Caffe models); ``mean`` and ``std`` are
    in that order too."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels: str = "rgb"


#: ``--normalize`` presets: (mean, std) of the RGB channels in [0, 1] units
NORMALIZE_PRESETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    # OpenAI CLIP and OpenCLIP's default (open_clip.constants.OPENAI_DATASET_MEAN/STD)
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    # Inception, and most ViTs of timm and Hugging Face: [-1, 1]
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    # Caffe's VGG and ResNet (BGR input in 0-255, minus the BGR mean, not divided): see
    # CHANNEL_ORDER
    "caffe": (
        (103.939 / 255, 116.779 / 255, 123.68 / 255),
        (1 / 255, 1 / 255, 1 / 255),
    ),
}
#: presets whose model takes its input channels in another order than RGB
CHANNEL_ORDER = {"caffe": "bgr"}
#: the suffix of ``--normalize`` values given in 0-255 units
UNITS_255 = "@255"
#: the suffix of ``--normalize`` values for a model taking BGR input
BGR = "+bgr"


def parse_normalize(value: str) -> Normalization:
    """A preset (:data:`NORMALIZE_PRESETS`: ``imagenet``, ``clip``, ``inception``,
    ``caffe``, ``none``) or ``M,M,M/S,S,S`` in [0, 1] units (the model sees ``(x - M) / S``
    for pixel values ``x`` in [0, 1]); ``M,M,M/S,S,S@255`` gives them in 0-255 units
    (divided by 255). A ``+bgr`` suffix (and the ``caffe`` preset) feeds the channels in
    BGR order, the means and deviations given in that order. Means outside [0, 1] or
    standard deviations outside (0, 1] without ``@255`` are refused: they are 0-255 values
    given as [0, 1] ones, which would dissect a model seeing nearly constant inputs."""
    v = value.strip().lower()
    if v in NORMALIZE_PRESETS:
        preset_mean, preset_std = NORMALIZE_PRESETS[v]
        return Normalization(v, preset_mean, preset_std, CHANNEL_ORDER.get(v, "rgb"))
    channels = "bgr" if v.endswith(BGR) else "rgb"
    v = v.removesuffix(BGR)
    scale = 255.0 if v.endswith(UNITS_255) else 1.0
    body = v.removesuffix(UNITS_255)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    try:
        mean_s, std_s = body.split("/")
        mean = tuple(float(x) / scale for x in mean_s.split(","))
        std = tuple(float(x) / scale for x in std_s.split(","))
    except ValueError:
        mean, std = (), ()
    finite = all(math.isfinite(x) for x in (*mean, *std))
    if len(mean) != 3 or len(std) != 3 or not finite or any(s <= 0 for s in std):
        raise DissectError(
            f"--normalize {value!r}: expected a preset ({', '.join(NORMALIZE_PRESETS)}) or "
            "MEAN,MEAN,MEAN/STD,STD,STD with three means and three positive standard "
            f"deviations, in [0, 1] units (or in 0-255 units with {UNITS_255} at the end; "
            f"{BGR} last for BGR input)"
        )
    if scale == 1.0 and (any(not 0 <= m <= 1 for m in mean) or any(s > 1 for s in std)):
        raise DissectError(
            f"--normalize {value!r}: these look like 0-255 values, but --normalize takes "
            f"[0, 1] units (the images are scaled to [0, 1] first); add {UNITS_255} to give "
            f"0-255 values (--normalize '{body}{UNITS_255}'), or divide them by 255"
        )
    return Normalization(value, mean, std, channels)  # type: ignore[arg-type]


def model_normalization(value: str | None, loaded: LoadedModel) -> Normalization:
    """The normalisation to use: ``value`` (``--normalize``) when given, else the mean and
    std the model's own config states (a timm, hf or open_clip model), else ImageNet's."""
    if value is not None:
        return parse_normalize(value)
    prep = loaded.preprocessing
    if prep is not None and prep.mean is not None and prep.std is not None:
        return Normalization(f"from {prep.source}", prep.mean, prep.std)
    return parse_normalize("imagenet")


def preprocess(images: torch.Tensor, norm: Normalization, input_size: int | None) -> torch.Tensor:
    """(B, S, S, 3) uint8 RGB → (B, 3, N, N) float32 normalised model input (its
    channels in ``norm.channels`` order)."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if norm.channels == "bgr":
        x = x.flip(1)
    if input_size is not None and input_size != x.shape[-1]:
        x = F.interpolate(
            x,
            size=(input_size, input_size),
            mode="bilinear",
            align_corners=False,
            antialias=input_size < x.shape[-1],
        )
    mean = torch.tensor(norm.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """The context of a model's forward pass: with ``enabled`` (``--amp``) mixed precision,
    float16 on CUDA and bfloat16 on the CPU; otherwise full precision (a no-op)."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def state_digest(module: nn.Module) -> str:
    """Digest of every parameter and buffer (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _torchvision(name: str, weights: str | None) -> nn.Module:
    try:
        import torchvision  # noqa: F401
        from torchvision import models
    except Exception as e:  # ImportError, or a CUDA-only build failing to load
        raise DissectError(
            f"torchvision is not importable here ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "install a torchvision build that matches your torch "
            f"({torch.__version__}), or use the built-in `dissect.zoo:resnet18`, which loads "
            "torchvision's resnet18 weights with --weights"
        ) from None
    try:
        return models.get_model(name, weights=weights)
    except Exception as e:
        raise DissectError(f"torchvision cannot build model {name!r}: {e}") from None


#: short module names accepted in ``package.module:factory`` specs
MODULE_ALIASES = {"dissect.zoo": "broden.dissect.zoo"}


def _factory(spec: str) -> nn.Module:
    mod_name, _, fn_name = spec.partition(":")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)  # as `python -m` does: a module beside the user imports
    try:
        mod = importlib.import_module(MODULE_ALIASES.get(mod_name, mod_name))
    except Exception as e:
        raise DissectError(
            f"--model {spec}: cannot import module {mod_name!r} ({type(e).__name__}: {e})"
        ) from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise DissectError(f"--model {spec}: module {mod_name!r} has no callable {fn_name!r}")
    try:
        model = fn()
    except Exception as e:
        raise DissectError(
            f"--model {spec}: {fn_name}() failed ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(model, nn.Module):
        raise DissectError(
            f"--model {spec}: {fn_name}() returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _exported(path: Path) -> tuple[nn.Module, int | None, int | None]:
    try:
        ep = torch.export.load(str(path))
    except Exception as e:
        raise DissectError(f"cannot load {path} as a torch.export program: {e}") from None
    size = batch = None
    try:
        example = ep.example_inputs[0][0] if ep.example_inputs else None
    except Exception:
        example = None
    if isinstance(example, torch.Tensor) and example.ndim == 4:
        size = int(example.shape[-1])
        # a static batch dimension shows as a plain int in the graph's input shape
        placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
        user = [n for n in placeholders if n.name in ep.graph_signature.user_inputs]
        if user:
            val = user[0].meta.get("val")
            if val is not None and isinstance(val.shape[0], int):
                batch = int(val.shape[0])
    return torch.export.unflatten(ep), size, batch


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DissectError(f"--weights {path}: no such file") from None
    except Exception as e:
        raise DissectError(
            f"--weights {path}: not a state dict that torch.load(weights_only=True) can read "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DissectError(f"--weights {path}: expected a dict of tensors (a state dict)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_weights(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state dict file into ``module`` strictly (see the module docstring)."""
    sd = _state_dict(Path(path))
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:4])})")
        raise DissectError(f"--weights {path} does not fit the model: {'; '.join(parts)}")
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln][:2]
        raise DissectError(
            f"--weights {path} does not fit the model: {'; '.join(first) or str(e)}"
        ) from None


def load_model(
    spec: str | nn.Module,
    weights: str | os.PathLike[str] | None = None,
    revision: str | None = None,
) -> LoadedModel:
    """Build or load the model named by ``spec`` (see the module docstring), load
    ``weights`` into it, and put it in eval mode. ``revision``: of an ``hf:`` model."""
    input_size = batch = None
    file_hash = ""
    prep = None
    if isinstance(spec, nn.Module):
        module, label = spec, f"module:{type(spec).__module__}.{type(spec).__qualname__}"
    else:
        label = spec
        path = Path(spec)
        if spec.startswith("torchvision:"):
            _, name, *rest = spec.split(":")
            module = _torchvision(name, rest[0] if rest else None)
        elif family_of(spec) is not None:
            module, prep = load_family(spec, revision)
            input_size = prep.input_size
        elif path.is_file():
            file_hash = file_digest(path)
            if path.suffix == ".pt2":
                module, input_size, batch = _exported(path)
            else:
                try:
                    module = torch.jit.load(str(path), map_location="cpu")
                except Exception as e:
                    raise DissectError(
                        f"--model {spec}: not a TorchScript file ({type(e).__name__}); a state "
                        "dict goes with --weights next to a model spec such as "
                        "dissect.zoo:resnet18, a torch.export program needs the .pt2 suffix"
                    ) from None
        elif ":" in spec and not spec.endswith(":"):
            module = _factory(spec)
        else:
            raise DissectError(
                f"--model {spec!r}: not a file, and not torchvision:NAME or package.module:factory"
            )
    if weights is not None:
        load_weights(module, weights)
    module.eval()
    h = hashlib.sha256(f"{label}|{file_hash}|".encode())
    h.update(state_digest(module).encode())
    return LoadedModel(
        module,
        label,
        None if weights is None else str(weights),
        h.hexdigest()[:20],
        input_size,
        batch,
        model_prefix_tokens(module),
        prep,
        model_patch_size(module),
    )


def model_prefix_tokens(module: nn.Module) -> int | None:
    """The tokens before the patch grid in a transformer's token outputs (class,
    distillation and register tokens), where the model says: timm's
    ``num_prefix_tokens``, or a Hugging Face config's ``num_register_tokens`` (plus the
    class token). None when it does not say; the dissection then guesses from the token
    count (``T - ⌊√T⌋²``), which is wrong for 16 registers on a 4×4 grid, say."""
    n = getattr(module, "num_prefix_tokens", None)
    if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
        return n
    registers = getattr(getattr(module, "config", None), "num_register_tokens", None)
    if isinstance(registers, int) and not isinstance(registers, bool) and registers >= 0:
        return 1 + registers
    return None


def _square(value: Any) -> int | None:
    """A patch side from an int or an (h, w) pair of equal ints."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, tuple | list) and len(value) == 2 and value[0] == value[1]:
        return _square(value[0])
    return None


def model_patch_size(module: nn.Module) -> int | None:
    """A vision transformer's patch side where the model says: its ``patch_size``
    (torchvision, OpenCLIP), its ``patch_embed.patch_size`` (timm) or its config's
    ``patch_size`` (Hugging Face); None otherwise (a CNN)."""
    for owner in (module, getattr(module, "patch_embed", None), getattr(module, "config", None)):
        side = _square(getattr(owner, "patch_size", None)) if owner is not None else None
        if side is not None:
            return side
    return None


def check_patch_grid(loaded: LoadedModel, input_size: int) -> None:
    """:class:`DissectError` when the model's patch size does not divide ``input_size``:
    the patch grid would then cover only the top-left ``g·p`` pixels of each image (the
    rest cut off, or padded by the model), but its maps would be stretched over the whole
    image, misplacing every unit by up to a patch. Broden's images are square, so the
    grid is too; the fix is an input size that is a multiple of the patch."""
    p = loaded.patch_size
    if p is None or input_size % p == 0:
        return
    low, high = (input_size // p) * p, (input_size // p + 1) * p
    lower = f"--input-size {low} or " if low else ""
    raise DissectError(
        f"--model {loaded.spec}: input size {input_size} is not a multiple of its patch size "
        f"{p}, so its {input_size // p}×{input_size // p} patch grid would not cover the "
        f"images it is compared with; use {lower}--input-size {high}"
    )
