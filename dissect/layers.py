"""A model's layers as the dissection would read them (``broden layers MODEL_SPEC``): one
dummy forward pass at the model's input size with every module hooked, then per module its
output shape and how :func:`~broden.dissect.hooks.to_unit_maps` reads it (units × h×w, the
layout, the class/register tokens dropped), or why it cannot be dissected, so that a
``--layer`` can be picked without reading the model's code.

The dummy batch holds two images (or an exported model's fixed batch size), so that an
output whose first axis is not the batch (a sequence-first transformer layer) shows as
such; the images are constant grey, normalised as ``--normalize`` says (default: as the
dissection would, the model's own mean and std, else ImageNet's).

>>> for info in list_layers("dissect.zoo:resnet18")[-3:]:         # doctest: +SKIP
...     print(info.name, info.shape, info.reading)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from broden.dissect.errors import DissectError
from broden.dissect.hooks import layout_for, read_unit_maps
from broden.dissect.models import autocast, load_model, model_normalization, preprocess

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
        n = self.prefix_tokens
        tokens = f", {n} prefix token{'s' if n != 1 else ''} dropped" if n else ""
        pooled = "; one value per image: no localisation" if self.grid == (1, 1) else ""
        return f"{self.units} units × {self.grid[0]}×{self.grid[1]} ({self.layout}{tokens}){pooled}"

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values (``--json``)."""
        d = asdict(self)
        d["reading"] = self.reading
        return d


def _shape_of(output: Any) -> tuple[int, ...] | None:
    """The shape of the tensor a module's output contributes by default, if any."""
    if isinstance(output, tuple | list) and output:
        output = output[0]
    elif isinstance(output, Mapping):
        output = output.get("last_hidden_state", next(iter(output.values()), None))
    return tuple(output.shape) if isinstance(output, torch.Tensor) else None


def read_output(
    name: str, module: nn.Module, output: Any, fed: int, layout: str, prefix: int | None
) -> LayerInfo:
    """The :class:`LayerInfo` of ``module``'s ``output`` for a batch of ``fed`` images
    (``layout``: as ``--layout`` takes it, for every layer or per layer)."""
    shape = _shape_of(output)
    kind = type(module).__name__
    try:
        maps, reading = read_unit_maps(output, name, layout_for(layout, name), prefix)
    except DissectError as e:
        text = str(e).removeprefix(f"layer {name!r} ").removeprefix(f"layer {name!r}: ")
        return LayerInfo(name, kind, shape, problem=text)
    if maps.shape[0] != fed:
        why = f"its first axis is not the batch ({fed} images fed): sequence-first?"
        return LayerInfo(name, kind, shape, problem=why, batch_first=False)
    r = reading
    return LayerInfo(name, kind, shape, r.units, r.grid, r.layout, r.prefix_tokens)


def list_layers(
    model: str | nn.Module,
    weights: str | os.PathLike[str] | None = None,
    *,
    revision: str | None = None,
    input_size: int | None = None,
    normalize: str | None = None,
    layout: str = "auto",
    prefix_tokens: int | None = None,
    device: str = "cpu",
) -> list[LayerInfo]:
    """Every named module of ``model`` (a spec, as ``broden dissect --model`` takes, or a
    module) that ran in one dummy forward pass, in ``named_modules()`` order, with how the
    dissection would read its output (see :class:`LayerInfo`). ``input_size``: default the
    model's own (an exported model's or its config's), else 224; ``revision``, ``layout``
    and ``prefix_tokens`` as ``broden dissect`` takes them."""
    if input_size is not None and input_size < 1:
        raise DissectError(f"--input-size must be at least 1, got {input_size}")
    loaded = load_model(model, weights, revision)
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
    x = preprocess(images, model_normalization(normalize, loaded), None)
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
