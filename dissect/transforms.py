"""Unit transforms: a function from each batch's (B, U, h, w) activations to the maps that
are dissected instead (e.g. the rotation experiment's :class:`ChannelRotation`), named by
a ``transform_key`` that enters the results cache key and ``summary.json``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from broden.dissect.errors import DissectError

if TYPE_CHECKING:
    import torch

UnitTransform = Callable[["torch.Tensor"], "torch.Tensor"]
#: a layer's transform and its key
Keyed = tuple[UnitTransform, str]


def resolve_transforms(
    unit_transform: UnitTransform | Mapping[str, UnitTransform] | None,
    transform_key: str | Mapping[str, str] | None,
    layers: Sequence[str],
) -> dict[str, Keyed]:
    """Layer → (transform, key) from one transform for every layer or one per layer; a
    transform without a key, or one for a layer not dissected, is a :class:`DissectError`."""
    if unit_transform is None:
        return {}
    fns = (
        dict(unit_transform)
        if isinstance(unit_transform, Mapping)
        else {la: unit_transform for la in layers}
    )
    unknown = set(fns) - set(layers)
    if unknown:
        raise DissectError(f"unit_transform given for layers {sorted(unknown)} not dissected")
    out = {}
    for la, fn in fns.items():
        key = transform_key.get(la) if isinstance(transform_key, Mapping) else transform_key
        if not key:
            raise DissectError(
                f"unit_transform for layer {la!r} needs a transform_key: a string naming the "
                "transform and its parameters, which goes into the results cache key"
            )
        out[la] = (fn, str(key))
    return out


def apply_transform(
    transform: UnitTransform | None, maps: torch.Tensor, layer: str
) -> torch.Tensor:
    """``transform(maps)`` checked to be (B, U', h, w) floating point (float32 unless
    float64), contiguous; ``maps`` itself without a transform."""
    import torch

    if transform is None:
        return maps
    out = transform(maps)
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != maps.shape[0]:
        raise DissectError(
            f"unit_transform of layer {layer!r} must return a (B, U, h, w) tensor for a "
            f"(B, U, h, w) input; got {getattr(out, 'shape', type(out))}"
        )
    if out.dtype not in (torch.float32, torch.float64):
        out = out.float()
    return out.contiguous()
