"""Stand-in for timm: ``create_model`` and ``data.resolve_data_config``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from vit import TinyViT

CREATED: list[tuple[str, bool]] = []


def create_model(name: str, pretrained: bool = False) -> TinyViT:
    if name != "vit_tiny_reg4":
        raise RuntimeError(f"Unknown model ({name})")
    CREATED.append((name, pretrained))
    model = TinyViT(prefix=5)
    model.num_prefix_tokens = 5  # timm's attribute: class + 4 registers
    model.pretrained_cfg = {"input_size": (3, 64, 64), "mean": (0.5, 0.5, 0.5),
                            "std": (0.5, 0.5, 0.5), "interpolation": "bicubic",
                            "crop_pct": 0.9}  # fmt: skip
    return model


def _resolve(args: dict[str, Any], model: Any = None) -> dict[str, Any]:
    return dict(model.pretrained_cfg)


data = SimpleNamespace(resolve_data_config=_resolve)
