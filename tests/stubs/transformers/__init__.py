"""Stand-in for transformers: ``AutoModel`` and ``AutoImageProcessor`` reading a folder
written like ``save_pretrained`` (config.json, preprocessor_config.json)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vit import TinyViT


class AutoModel:
    @staticmethod
    def from_pretrained(path: str, revision: str | None = None) -> TinyViT:
        cfg = json.loads((Path(path) / "config.json").read_text())
        model = TinyViT(prefix=1 + cfg.get("num_register_tokens", 0), tuple_out=True)
        model.config = SimpleNamespace(**cfg)
        return model


class AutoImageProcessor:
    @staticmethod
    def from_pretrained(path: str, revision: str | None = None) -> Any:
        f = Path(path) / "preprocessor_config.json"
        if not f.is_file():
            raise OSError(f"no preprocessor_config.json in {path}")
        return SimpleNamespace(**json.loads(f.read_text()))
