"""A model's layers as the dissection would read them (``broden layers MODEL_SPEC``): one
dummy forward pass at the model's input size with every module hooked, then per module its
output shape and how :func:`~broden.dissect.hooks.to_unit_maps` reads it (units × h×w, the
layout, the class/register tokens dropped), or why it cannot be dissected, so that a
``--layer`` can be picked without reading the model's code.

The dummy batch holds two images (or an exported model's fixed batch size), so that an
output whose first axis is not the batch (a sequence-first transformer layer) shows as
such; the images are constant grey, normalised as ``--normalize`` says.

>>> for info in list_layers("dissect.zoo:resnet18")[-3:]:         # doctest: +SKIP
...     print(info.name, info.shape, info.reading)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from broden.dissect.errors import DissectError
from broden.dissect.hooks import to_unit_maps
from broden.dissect.models import autocast, load_model, parse_normalize, preprocess

#: input size when neither the model nor the caller says
DEFAULT_INPUT_SIZE = 224


@dataclass(frozen=True)
class LayerInfo:
    """One module: its name (for ``--layer``), class, output shape for the dummy batch
    (None: not a tensor) and
    how the dissection reads it: ``units`` maps of ``grid`` (h, w) in ``layout`` after
    ``prefix_tokens``, or ``problem`` (why it cannot be dissected as it is)."""

    name: str
    kind: str
    shape: tuple[int, ...] | None
    units: int | None = None
    grid: tuple[int, int] | None = None
    layout: str | None = None
    prefix_tokens: int | None = None
    problem: str | None = None
    batch_first: bool = True  # the output's first axis is the batch

    @property
    def reading(self) -> str:
        """How the dissection reads the output, in words."""
        if self.problem is not None:
            return f"not dissectable: {self.problem}"
        assert self.grid is not None
        tokens = f", {self.prefix_tokens} prefix tokens dropped" if self.prefix_tokens else ""
        pooled = "; one value per image: no localisation" if self.grid == (1, 1) else ""
        return f"{self.units} units × {self.grid[0]}×{self.grid[1]} ({self.layout}{tokens}){pooled}"

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values (``--json``)."""
        d = asdict(self)
        d["reading"] = self.reading
        return d


def _first_tensor(output: Any) -> Any:
    return output[0] if isinstance(output, tuple | list) and output else output


def read_output(
    name: str, module: nn.Module, output: Any, fed: int, layout: str, prefix: int | None
) -> LayerInfo:
    """The :class:`LayerInfo` of ``module``'s ``output`` for a batch of ``fed`` images."""
    raw = _first_tensor(output)
    shape = tuple(raw.shape) if isinstance(raw, torch.Tensor) else None
    kind = type(module).__name__
    try:
        maps = to_unit_maps(output, name, layout, prefix)
    except DissectError as e:
        text = str(e).removeprefix(f"layer {name!r} ").removeprefix(f"layer {name!r}: ")
        return LayerInfo(name, kind, shape, problem=text)
    if maps.shape[0] != fed:
        why = f"its first axis is not the batch ({fed} images fed): sequence-first?"
        return LayerInfo(name, kind, shape, problem=why, batch_first=False)
    assert shape is not None
    h, w = int(maps.shape[2]), int(maps.shape[3])
    if len(shape) == 3:
        used, dropped = "tokens", shape[1] - h * w
    elif len(shape) == 4 and shape[1] != maps.shape[1]:
        used, dropped = "nhwc", None
    else:
        used, dropped = "nchw", None
    return LayerInfo(name, kind, shape, int(maps.shape[1]), (h, w), used, dropped)


def list_layers(
    model: str | nn.Module,
    weights: str | os.PathLike[str] | None = None,
    *,
    input_size: int | None = None,
    normalize: str = "imagenet",
    layout: str = "auto",
    prefix_tokens: int | None = None,
    device: str = "cpu",
) -> list[LayerInfo]:
    """Every named module of ``model`` (a spec, as ``broden dissect --model`` takes, or a
    module) that ran in one dummy forward pass, in ``named_modules()`` order, with how the
    dissection would read its output (see :class:`LayerInfo`). ``input_size``: default the
    model's own (an exported model's), else 224; ``layout`` and ``prefix_tokens`` as
    ``broden dissect`` takes them."""
    if input_size is not None and input_size < 1:
        raise DissectError(f"--input-size must be at least 1, got {input_size}")
    loaded = load_model(model, weights)
    if prefix_tokens is None:
        prefix_tokens = loaded.prefix_tokens  # as the dissection takes it
    size = input_size or loaded.input_size or DEFAULT_INPUT_SIZE
    fed = loaded.batch_size or 2
    dev = torch.device(device)
    module = loaded.module.to(dev)
    seen: dict[str, tuple[nn.Module, Any]] = {}
    handles = []
    for name, mod in module.named_modules():
        if not name:
            continue

        def hook(m: nn.Module, inputs: Any, output: Any, name: str = name) -> None:
            seen.setdefault(name, (m, output))

        handles.append(mod.register_forward_hook(hook))
    images = torch.full((fed, size, size, 3), 128, dtype=torch.uint8, device=dev)
    x = preprocess(images, parse_normalize(normalize), None)
    try:
        with torch.inference_mode(), autocast(dev, False):
            module(x)
    except Exception as e:  # noqa: BLE001 - the model's own failure, in one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise DissectError(
            f"the model failed on a dummy batch of shape {tuple(x.shape)}: "
            f"{type(e).__name__}: {first} (give --input-size if it wants another size)"
        ) from None
    finally:
        for h in handles:
            h.remove()
    order = [n for n, _ in module.named_modules() if n in seen]  # parents before children
    return [read_output(n, *seen[n], fed, layout, prefix_tokens) for n in order]
