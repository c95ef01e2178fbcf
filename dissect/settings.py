"""Every option of a dissection in one frozen, validated object: :class:`DissectSettings`.

The command line builds one from its options; :func:`broden.dissect.dissect`,
:func:`broden.dissect.score_activations`, the rotation experiment and the distributed
runs all take it. An option that does not fit (an unknown unit-area mode, a quantile
outside (0, 1), a malformed ``--normalize`` ...) is a :class:`DissectError` at
construction, before any work. What of it determines the counts goes into the results
cache key (:meth:`DissectSettings.key_parts`); the rest (IoU threshold, unit area, the
legacy CSV, the significance level ``alpha``, batch size, workers, device, progress) does
not.

>>> s = DissectSettings(quantile=0.01, unit_area="lite", batch_size=16)    # doctest: +SKIP
>>> dissect("broden.zarr", "dissect.zoo:resnet18", ["layer4"], s, out="out")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broden.dissect.errors import DissectError

#: top images kept per unit whatever ``top_k`` (the report may show up to this many)
MIN_TOP_IMAGES = 50
CACHE_CHOICES = ("auto", "yes", "no")


def parse_size(value: str | int | float) -> int:
    """Bytes from ``2GiB``, ``512MB``, ``1.5G``, ``1e9`` or a number (k/M/G/T: powers of 1000,
    Ki/Mi/Gi/Ti: powers of 1024)."""
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*", value)
    try:
        assert m is not None
        number = float(m.group(1))
    except (AssertionError, ValueError):
        raise DissectError(
            f"--memory-budget {value!r}: expected a size such as 2GiB or 500MB"
        ) from None
    power = "kmgt".find(m.group(2).lower()) + 1 if m.group(2) else 0
    return int(number * (1024 if m.group(3) else 1000) ** power)


def _names(value: Any) -> tuple[str, ...] | None:
    """None, a string or a sequence of strings → the non-empty names, or None."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    names = tuple(str(v).strip() for v in items if str(v).strip())
    return names or None


class DissectSettings(BaseModel):
    """The options of a dissection (defaults: the paper's and the CLI's)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    concepts: tuple[str, ...] | None = Field(
        None, description="concept set: categories, names, id:N, source:NAME or files (None: all)"
    )
    sources: tuple[str, ...] | None = Field(
        None, description="dissect only the images of these sources (None: every image)"
    )
    quantile: float = Field(0.005, description="top quantile of activations per unit")
    quantile_method: str = Field("exact", description="exact (numpy.quantile) or ndl")
    unit_area: str = Field("original", description="IoU denominator: original, lite or plain")
    iou_threshold: float = Field(0.04, description="a detector has IoU above this")
    alpha: float = Field(
        0.05, description="significance level of each unit's label (Benjamini-Hochberg)"
    )
    top_k: int = Field(10, description="top images per unit for the report")
    batch_size: int = Field(32, description="images per batch")
    workers: int = Field(2, description="data loader worker processes")
    device: str = Field("auto", description="auto, cpu or cuda[:N]")
    normalize: str | None = Field(
        None,
        description="a preset (imagenet, clip, inception, none) or MEAN,MEAN,MEAN/STD,STD,STD "
        "in [0, 1] units (@255: in 0-255); default: the model's own (timm, hf, open_clip), "
        "else imagenet",
    )
    input_size: int | None = Field(None, description="resize images to this size for the model")
    cache_activations: str = Field(
        "auto", description="auto: one forward pass when the activations fit the budget"
    )
    memory_budget: int = Field(2 * 1024**3, description="bytes for cached activations")
    layout: str = Field(
        "auto",
        description="output layout: auto, nchw or nhwc (4-D), tokens (3-D B×T×D); or per "
        "layer, LAYER=LAYOUT entries separated by commas with an optional bare default",
    )
    prefix_tokens: int | None = Field(
        None, description="class/register tokens before the patch grid"
    )
    amp: bool = Field(False, description="mixed precision for the model's forward pass")
    legacy_csv: bool = Field(False, description="also write NetDissect-Lite's tally.csv")
    force: bool = Field(False, description="recompute even when the cache key matches")
    progress: bool = Field(True, description="progress bars")
    distributed: bool = Field(False, description="this process is one rank of a torchrun launch")
    formulas: int = Field(
        0, description="compositional explanations: maximum formula length (0: off)"
    )
    beam: int = Field(5, description="beam width of the formula search")

    @field_validator("concepts", mode="before")
    @classmethod
    def _concepts(cls, value: Any) -> tuple[str, ...] | None:
        from broden.dissect.concepts import concept_spec

        return concept_spec(value)

    @field_validator("sources", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> tuple[str, ...] | None:
        return _names(value)

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> str:
        return str(value)

    @model_validator(mode="after")
    def _check(self) -> DissectSettings:
        from broden.dissect.hooks import parse_layouts
        from broden.dissect.models import parse_normalize
        from broden.dissect.scoring import MODES
        from broden.dissect.thresholds import validate_quantile

        validate_quantile(self.quantile, self.quantile_method)
        if self.unit_area not in MODES:
            raise DissectError(f"unknown --unit-area {self.unit_area!r}; use one of {list(MODES)}")
        if not 0 <= self.iou_threshold < 1:
            raise DissectError(f"--iou-threshold must lie in [0, 1), got {self.iou_threshold}")
        if not 0 < self.alpha < 1:
            raise DissectError(
                f"--significance-alpha must lie strictly between 0 and 1, got {self.alpha}"
            )
        for name in ("top_k", "batch_size"):
            if getattr(self, name) < 1:
                option = name.replace("_", "-")
                raise DissectError(f"--{option} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise DissectError(f"--workers must be 0 or more, got {self.workers}")
        if self.cache_activations not in CACHE_CHOICES:
            raise DissectError(
                f"--cache-activations {self.cache_activations!r}: use auto, yes or no"
            )
        parse_layouts(self.layout)
        if self.input_size is not None and self.input_size < 1:
            raise DissectError(f"--input-size must be at least 1, got {self.input_size}")
        if self.normalize is not None:
            parse_normalize(self.normalize)
        self._check_formulas()
        return self

    def _check_formulas(self) -> None:
        if self.formulas < 0:
            raise DissectError(f"--formulas must be 0 (off) or more, got {self.formulas}")
        if self.beam < 1:
            raise DissectError(f"--beam must be at least 1, got {self.beam}")
        if self.formulas and self.distributed:
            raise DissectError(
                "--formulas does not work with --distributed (torchrun) yet: the formula "
                "search needs every image's unit masks in one process; run without "
                "--distributed, or without --formulas"
            )

    def replace(self, **changes: Any) -> DissectSettings:
        """A copy with ``changes``, validated again."""
        return DissectSettings(**{**self.model_dump(), **changes})

    @property
    def top_images(self) -> int:
        """Top images recorded per unit: ``top_k``, at least :data:`MIN_TOP_IMAGES`."""
        return max(MIN_TOP_IMAGES, self.top_k)

    def key_parts(self, given: np.ndarray | None) -> dict[str, Any]:
        """What of these settings determines a layer's counts, for its cache key: the
        threshold rule (or the given thresholds' digest), the top images kept, and
        ``amp`` and the formula search (length, beam) when on (so that keys made before
        they existed still hold)."""
        if given is None:
            thr: Any = {"quantile": self.quantile, "method": self.quantile_method}
        else:
            arr = np.ascontiguousarray(np.asarray(given, np.float64))
            thr = {"given": hashlib.sha256(arr.tobytes()).hexdigest()[:20]}
        parts: dict[str, Any] = {"thresholds": thr, "top_images": self.top_images}
        if self.amp:
            parts["amp"] = True
        if self.formulas:  # only when on, so that the keys of results without still hold
            parts["formulas"] = {"length": self.formulas, "beam": self.beam}
        return parts

    def formula_settings(self) -> dict[str, int]:
        """``formulas`` and ``beam`` for ``summary.json``'s settings; nothing when off."""
        return {"formulas": self.formulas, "beam": self.beam} if self.formulas else {}
