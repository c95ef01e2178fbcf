"""Capturing layer outputs: modules named by their dotted path in ``named_modules()``,
hooked with ``register_forward_hook`` (several layers in one forward pass), and the
conversion of what they return into unit maps (B, U, h, w).

Output layouts (``layout``):

``auto`` (default)
    4-D output (B, a, b, c): channels-last (B, h, w, C) when ``a == b`` and ``b != c``
    (a square grid followed by a different channel count, as Swin and ConvNeXt blocks
    return), otherwise channels-first (B, C, h, w). 3-D output (B, T, D): transformer
    tokens, see below, when T is a square grid after at most :data:`MAX_AUTO_PREFIX`
    class/register tokens (or ``prefix_tokens`` is given); other 3-D output (a 1-D
    convolution's (B, C, L) may look like tokens) is an error asking for ``tokens``.
    2-D (B, D): one value per unit (a 1×1 map).
``nchw`` / ``nhwc``
    force channels-first / channels-last for 4-D outputs.
``tokens``
    3-D output is transformer tokens (B, T, D), whatever T.

An output with no units (0 channels) or an empty map is an error.

Tokens (B, T, D) are reshaped to the square patch grid: the first ``prefix_tokens``
(class and register tokens) are dropped and the remaining T' = g² tokens become a
g×g map of D units. Without ``prefix_tokens`` the prefix is T - ⌊√T⌋² (1 for a ViT
with a class token, 5 for DINOv2 with 4 registers, 0 for a plain grid).

``--layout`` may differ per layer: ``LAYER=LAYOUT`` entries, comma-separated, with an
optional bare default (``nhwc,blocks.3=tokens``; :func:`parse_layouts`).

A module whose output is a tuple or list contributes its first element; a dict-like
output (a Hugging Face ``ModelOutput``) its ``last_hidden_state``, or its only tensor.
Any other part of a module's output is a layer ``MODULE.KEY`` (``MODULE.N``,
``MODULE.KEY.N``, ...): the longest dotted prefix of the name that is a module is hooked
and the rest picks from its output (dict keys, tuple indices, attributes), so
``encoder.layer.3.0`` is the first element of what ``encoder.layer.3`` returns unless
``encoder.layer.3.0`` is itself a module. The pseudo layer ``output`` (``output.N``,
``output.KEY``) is the model's return value (element N or key KEY of it): the way to reach
features of a TorchScript model, which cannot take Python hooks.

:func:`read_unit_maps` also says how it read an output (:class:`Reading`: the layout
used, the prefix tokens dropped, the grid), which the dissection records per layer.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn

from broden.dissect.errors import DissectError

LAYOUTS: tuple[str, ...] = ("auto", "nchw", "nhwc", "tokens")
#: ``auto`` reads 3-D output as tokens only with at most this many before the grid
#: (ViT: 1 class token, DeiT: 2, DINOv2: 1 + 4 registers)
MAX_AUTO_PREFIX = 8
OUTPUT = "output"


class _StopForward(Exception):
    """Raised by a hook once every requested layer has been seen: the rest of the
    forward pass is not needed."""


def _is_output(name: str) -> bool:
    return name == OUTPUT or name.startswith(OUTPUT + ".")


def split_layer(name: str, modules: Mapping[str, nn.Module]) -> tuple[str, str] | None:
    """``(module, path)`` of a layer name: the name itself when it is a module (path
    ``""``), else its longest dotted prefix that is one (a non-root module) and the rest,
    which picks a part of that module's output; ``("", path)`` for the pseudo layer
    ``output[.path]``; None when no prefix is a module."""
    if name and name in modules:
        return name, ""
    if _is_output(name):
        return "", name[len(OUTPUT) + 1 :]
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in modules:
            return head, ".".join(parts[cut:])
    return None


def _pick_output(value: Any, path: str, layer: str) -> Any:
    for part in path.split(".") if path else []:
        if isinstance(value, Mapping):
            if part not in value:
                raise DissectError(
                    f"layer {layer!r}: the output has no key {part!r} (keys: {list(value)[:10]})"
                )
            value = value[part]
        elif isinstance(value, (tuple, list)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif (
            not isinstance(value, torch.Tensor)
            and not part.startswith("_")
            and hasattr(value, part)
        ):  # a dataclass-like output's field
            value = getattr(value, part)
        else:
            what = f"{len(value)} elements" if isinstance(value, tuple | list) else "no such part"
            raise DissectError(
                f"layer {layer!r}: cannot take {part!r} of a {type(value).__name__} ({what})"
            )
    return value


def check_layers(model: nn.Module, layers: Sequence[str]) -> None:
    """Fail with close matches when a layer name is not a module of ``model`` (or a part
    of a module's output, ``MODULE.KEY``)."""
    modules = dict(model.named_modules())
    names = [n for n in modules if n]
    for layer in layers:
        split = split_layer(layer, modules)
        if split is not None and not _looks_like_typo(split, modules):
            continue
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
        if not close:
            close = [n for n in names if "." not in n][:10]
            hint = f"its top-level modules are {', '.join(close)}"
        else:
            hint = f"did you mean {', '.join(close)}?"
        raise DissectError(
            f"the model has no layer {layer!r}; {hint} (layer names are the dotted paths of "
            "model.named_modules(), or `output` for the model's return value)"
        )
    if isinstance(model, torch.jit.ScriptModule):
        hooked = [la for la in layers if not _is_output(la)]
        if hooked:
            raise DissectError(
                f"TorchScript models cannot take forward hooks on their submodules (a PyTorch "
                f"limitation), so layer {hooked[0]!r} cannot be captured; save the model with "
                "torch.export (.pt2) instead, or script a model that returns the features and "
                "use --layer output"
            )


def _looks_like_typo(split: tuple[str, str], modules: Mapping[str, nn.Module]) -> bool:
    """Whether ``MODULE.PATH`` is more likely a misspelt submodule than a part of the
    module's output: the first part of the path is close to the name of one of the
    module's children (``layer2.1.cnv2``: ``conv2``)."""
    module, path = split
    if not module or not path:
        return False
    first = path.split(".")[0]
    children = [n for n, _ in modules[module].named_children()]
    return bool(difflib.get_close_matches(first, children, n=1, cutoff=0.6))


class LayerCapture:
    """Context manager that hooks ``layers`` of ``model``; :meth:`run` returns their
    outputs for one input batch (the first call of each module in the pass; for a layer
    ``MODULE.KEY``, that part of the module's output).

    >>> with LayerCapture(model, ["layer3", "layer4"]) as cap:   # doctest: +SKIP
    ...     outs = cap.run(images)
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        check_layers(model, layers)
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        modules = dict(model.named_modules())
        self.where: dict[str, tuple[str, str]] = {}
        for la in self.layers:
            split = split_layer(la, modules)
            assert split is not None  # checked above
            self.where[la] = split
        self.hooked = list(dict.fromkeys(m for m, _ in self.where.values() if m))
        self.needs_output = any(not m for m, _ in self.where.values())
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._outputs: dict[str, Any] = {}

    def __enter__(self) -> LayerCapture:
        modules = dict(self.model.named_modules())
        for name in self.hooked:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if name not in self._outputs:
                self._outputs[name] = output
            if not self.needs_output and len(self._outputs) == len(self.hooked):
                raise _StopForward

        return hook

    def run(self, inputs: torch.Tensor) -> dict[str, Any]:
        self._outputs = {}
        try:
            result = self.model(inputs)
        except _StopForward:
            result = None
        missing = [m for m in self.hooked if m not in self._outputs]
        if missing:
            raise DissectError(
                f"layers {missing} did not run during the forward pass (modules defined but "
                "not called by forward())"
            )
        got = dict(self._outputs)
        self._outputs = {}
        outs = {}
        for la, (module, path) in self.where.items():
            outs[la] = _pick_output(got[module] if module else result, path, la)
        return outs


@dataclass(frozen=True)
class Reading:
    """How :func:`read_unit_maps` read a layer's output: ``layout`` ``nchw``, ``nhwc``,
    ``tokens`` or ``vector`` (one value per unit), ``prefix_tokens`` dropped (tokens
    only, else None), the ``units`` and the ``grid`` (h, w) of the maps."""

    layout: str
    prefix_tokens: int | None
    units: int
    grid: tuple[int, int]


def parse_layouts(value: str) -> dict[str, str]:
    """``--layout``: one layout for every layer (``nhwc``) or per layer, ``LAYER=LAYOUT``
    entries, comma-separated, with an optional bare default (``nhwc,blocks.3=tokens``).
    Returns layer → layout, the default under the key ``""`` (``auto`` when not given)."""
    out: dict[str, str] = {"": "auto"}
    defaults = 0
    for item in (p.strip() for p in value.split(",")):
        layer, eq, layout = item.rpartition("=")
        layer, layout = layer.strip(), layout.strip()
        if layout not in LAYOUTS or (eq and not layer):
            raise DissectError(
                f"--layout {value!r}: {item!r} is not a layout; use one of {list(LAYOUTS)}, "
                "or LAYER=LAYOUT entries separated by commas (e.g. nhwc,blocks.3=tokens)"
            )
        if not eq:
            defaults += 1
        if defaults > 1 or (eq and layer in out):
            raise DissectError(f"--layout {value!r}: {item!r} gives a layout twice")
        out[layer] = layout
    return out


def layout_for(value: str, layer: str) -> str:
    """The layout ``--layout`` ``value`` gives ``layer`` (see :func:`parse_layouts`)."""
    layouts = parse_layouts(value)
    return layouts.get(layer, layouts[""])


def check_layout_layers(value: str, layers: Sequence[str]) -> None:
    """:class:`DissectError` when ``--layout`` names a layer that is not dissected (a
    typo would otherwise silently leave that layer on the default)."""
    named = [la for la in parse_layouts(value) if la]
    stray = [la for la in named if la not in layers]
    if stray:
        raise DissectError(
            f"--layout {value!r} names layer {stray[0]!r}, which is not dissected "
            f"(layers: {', '.join(layers)})"
        )


def _tensor_of(output: Any, layer: str) -> Any:
    """The tensor a module's output contributes by default: a tuple's or list's first
    element, a dict-like output's ``last_hidden_state`` or its only tensor."""
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    if isinstance(output, Mapping):
        if isinstance(output.get("last_hidden_state"), torch.Tensor):
            return output["last_hidden_state"]
        tensors = [k for k, v in output.items() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return output[tensors[0]]
        raise DissectError(
            f"layer {layer!r} returns a {type(output).__name__} with keys {list(output)[:10]}: "
            f"pick one as a layer {layer}.KEY"
        )
    return output


def to_unit_maps(
    output: Any, layer: str, layout: str = "auto", prefix_tokens: int | None = None
) -> torch.Tensor:
    """A layer's output as (B, U, h, w) float32/float64 maps (see the module docstring)."""
    return read_unit_maps(output, layer, layout, prefix_tokens)[0]


def read_unit_maps(
    output: Any, layer: str, layout: str = "auto", prefix_tokens: int | None = None
) -> tuple[torch.Tensor, Reading]:
    """:func:`to_unit_maps`, and how it read the output (:class:`Reading`)."""
    output = _tensor_of(output, layer)
    if not isinstance(output, torch.Tensor):
        raise DissectError(
            f"layer {layer!r} returns a {type(output).__name__}, not a tensor; pick a module "
            "that returns a feature tensor"
        )
    x = output.detach()
    if not x.is_floating_point():
        raise DissectError(f"layer {layer!r} returns {x.dtype} values, not floating point")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if layout not in LAYOUTS:
        raise DissectError(f"unknown layout {layout!r}; use one of {list(LAYOUTS)}")
    if x.ndim == 4 and layout == "tokens":
        raise DissectError(
            f"--layout tokens: layer {layer!r} returns a 4-D tensor {tuple(x.shape)}, not "
            "tokens (B, T, D); use --layout auto, nchw or nhwc"
        )
    given = tuple(x.shape)
    dropped = None
    if x.ndim == 4:
        channels_last = layout == "nhwc" or (
            layout == "auto" and x.shape[1] == x.shape[2] and x.shape[2] != x.shape[3]
        )
        used = "nhwc" if channels_last else "nchw"
        if channels_last:
            x = x.permute(0, 3, 1, 2)
        if layout in ("nchw", "nhwc") and x.shape[2] != x.shape[3]:
            _, units, h, w = x.shape
            raise DissectError(
                f"--layout {layout}: layer {layer!r} returns {given}, read as {units} units "
                f"of {h}×{w}: not square, but the store's images are square, so a layer's "
                "maps are; is the layout right? (--layout auto detects channels-last maps)"
            )
    elif x.ndim == 3:
        x, dropped = _tokens(x, layer, layout, prefix_tokens)
        used = "tokens"
    elif x.ndim == 2:
        x, used = x[:, :, None, None], "vector"
    else:
        raise DissectError(
            f"layer {layer!r} returns a {x.ndim}-D tensor {tuple(x.shape)}; expected (B, C, h, w), "
            "(B, h, w, C), tokens (B, T, D) or (B, D)"
        )
    _, units, h, w = x.shape
    if 0 in x.shape[1:]:
        raise DissectError(
            f"layer {layer!r} returns {tuple(output.shape)}: {units} units of {h}×{w} "
            "values, nothing to dissect; pick a layer with units and a non-empty map"
        )
    return x.contiguous(), Reading(used, dropped, int(units), (int(h), int(w)))


def _tokens(
    x: torch.Tensor, layer: str, layout: str, prefix_tokens: int | None
) -> tuple[torch.Tensor, int]:
    """Tokens (B, T, D) → the (B, D, g, g) patch grid, and the prefix tokens dropped."""
    B, T, D = x.shape
    if prefix_tokens is None:
        g = math.isqrt(T)
        prefix = T - g * g
    else:
        prefix = prefix_tokens
        g = math.isqrt(max(T - prefix, 0))
    if prefix < 0 or g < 1 or g * g != T - prefix:
        raise DissectError(
            f"layer {layer!r}: {T} tokens minus {prefix} prefix tokens is not a square grid; "
            "set the number of class/register tokens with --prefix-tokens"
        )
    if prefix_tokens is None and layout != "tokens" and prefix > MAX_AUTO_PREFIX:
        raise DissectError(
            f"layer {layer!r} returns a 3-D tensor {tuple(x.shape)}, ambiguous: as "
            f"transformer tokens (B, T, D) it would be a {g}×{g} grid after {prefix} "
            "class/register tokens; if it is tokens, say so with --layout tokens (and "
            "--prefix-tokens N); other 3-D outputs (a 1-D convolution's (B, C, L)) "
            "cannot be dissected"
        )
    return x[:, prefix:, :].reshape(B, g, g, D).permute(0, 3, 1, 2), prefix
