"""``summary.json``, typed: what a dissected layer records about how it was made and what
it found. Written through :class:`LayerSummary` by the dissection and read back through it
by everything that reads a results folder (``broden report``, ``compare``, ``segment``, the
results cache), so a missing, renamed, truncated or tampered key is one clear error
naming the file, never a ``KeyError`` deep inside.

The document (keys in this order; keys a run does not use are left out)::

    layer, cache_key
    settings     quantile, quantile_method, thresholds (given | computed), top_images, top_k,
                 batch_size, device, sources, distributed, normalize, input_size, layout,
                 prefix_tokens (as asked), layout_used, prefix_tokens_used (as read),
                 workers, cache_activations, amp, transform, passes,
                 formulas, beam (when formulas are on), unit_area, iou_threshold, alpha
    store        path, fingerprint, images, dissected_images, image_size, label_size
    concepts     selection, fingerprint, count, categories
    model        spec, weights, revision, fingerprint, input_size, normalize ([mean, std]),
                 channels (bgr only), layout, prefix_tokens        (a model), or
                 activations, fingerprint, layout, prefix_tokens   (precomputed activations)
    timings      seconds per phase
    units, detectors, significant_detectors (detectors whose label is significant at
    alpha; left out when the layer has no p-values), unique_detectors {top_label, per_category},
    per_category {<category>: detectors, unique_top_label, units_over_threshold,
                  unique_per_category}, top_labels, activation_shape, reused
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from broden.dissect.errors import DissectError

#: the file name of a layer's summary
SUMMARY = "summary.json"
#: a layer's file of the maps of each unit's ``top_k`` best images: (units, k, h, w), the
#: dtype of the dissected maps (float32 for a model), best first as in ``topk.npz``
TOPMAPS = "topmaps.npy"
#: a layer's raw p-values of the significance tests: units × concepts float64, NaN where
#: not tested (:mod:`broden.dissect.significance_collect`)
PVALUES = "pvalues.npy"


#: larger is not a summary (read whole, so a tampered one must not fill the memory)
MAX_SUMMARY_BYTES = 16 << 20

#: a count of units or concepts
Count = Annotated[int, Field(ge=0)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distributed(_Record):
    world_size: int
    backend: str


class RunSettings(_Record):
    """How the layer was dissected (``settings``)."""

    quantile: float
    quantile_method: str | None = None  # None: the thresholds were given
    thresholds: Literal["given", "computed"]
    top_images: int
    top_k: int
    batch_size: int
    device: str
    sources: list[str] | None = None
    distributed: Distributed | None = None
    normalize: str | None = None
    input_size: int | None = None
    layout: str = "auto"
    prefix_tokens: int | None = None
    #: how the layer's output was read: nchw, nhwc, tokens or vector (None: before it was
    #: recorded), and the class/register tokens dropped (tokens only)
    layout_used: str | None = None
    prefix_tokens_used: int | None = None
    workers: int = 0
    cache_activations: str | None = None
    amp: bool = False
    transform: str | None = None
    passes: int | None = None
    formulas: int = 0  # maximum formula length of the compositional explanations (0: off)
    beam: int = 5  # their beam width
    unit_area: str
    iou_threshold: float
    alpha: float | None = None  # significance level of the labels (None: before it existed)


class StoreRecord(_Record):
    """The dissected store (``store``)."""

    path: str
    fingerprint: str
    images: int
    dissected_images: int
    image_size: int
    label_size: int


class ConceptsRecord(_Record):
    """The scored concepts (``concepts``)."""

    selection: str
    fingerprint: str = ""
    count: int
    categories: list[str]


class ModelRecord(_Record):
    """A model's run (``model``): what loads it again and how its input was made."""

    spec: str
    weights: str | None = None
    revision: str | None = None  # the hub revision of an hf: model
    fingerprint: str
    input_size: int | None = None
    #: mean and std in [0, 1] units, in the order of the model's input channels
    normalize: tuple[tuple[float, float, float], tuple[float, float, float]]
    channels: Literal["rgb", "bgr"] = "rgb"  # the order of the model's input channels
    layout: str = "auto"
    prefix_tokens: int | None = None


class ActivationsRecord(_Record):
    """Precomputed activations (``model``): the file (or ``array``) and its fingerprint."""

    activations: str
    fingerprint: str
    layout: str = "auto"
    prefix_tokens: int | None = None


class UniqueDetectors(_Record):
    top_label: Count
    per_category: Count


class CategoryDetectors(_Record):
    detectors: Count
    unique_top_label: Count
    units_over_threshold: Count
    unique_per_category: Count


class Detectors(_Record):
    """The detector numbers of a layer at one IoU threshold
    (:func:`broden.dissect.scoring.detector_summary`)."""

    units: Count
    detectors: Count
    significant_detectors: Count | None = None
    unique_detectors: UniqueDetectors
    per_category: dict[str, CategoryDetectors]
    top_labels: list[str]


class LayerSummary(_Record):
    """One dissected layer's ``summary.json``."""

    layer: str
    cache_key: str
    settings: RunSettings
    store: StoreRecord
    concepts: ConceptsRecord
    model: ModelRecord | ActivationsRecord
    timings: dict[str, float] = {}
    units: Count
    detectors: Count
    #: detectors whose label is significant at ``settings.alpha`` (None: no p-values)
    significant_detectors: Count | None = None
    unique_detectors: UniqueDetectors
    per_category: dict[str, CategoryDetectors]
    top_labels: list[str]
    activation_shape: tuple[int, int]
    reused: bool = False

    @property
    def source(self) -> str:
        """The model spec, or the activation file's name (``activations`` for an array)."""
        if isinstance(self.model, ModelRecord):
            return self.model.spec
        act = self.model.activations
        return Path(act).name if act != "array" else "activations"

    def detector_numbers(self) -> Detectors:
        """The detector part of the summary."""
        return Detectors.model_validate(
            self.model_dump(include=set(Detectors.model_fields), mode="json")
        )

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_unset=True), indent=2)

    def write(self, directory: Path) -> Path:
        """Write ``directory/summary.json``."""
        path = directory / SUMMARY
        path.write_text(self.to_json())
        return path

    @classmethod
    def read(cls, directory: Path) -> LayerSummary:
        """``directory/summary.json``; :class:`DissectError` naming the file and the first
        problem when it is missing, not JSON, or not a dissection summary. Values are read
        strictly: a count written as ``true``, ``"5"`` or ``2.5`` is an error, not coerced."""
        path = directory / SUMMARY
        try:
            if path.stat().st_size > MAX_SUMMARY_BYTES:
                raise ValueError(f"{path.stat().st_size} bytes; a summary is a few kB")
            text = path.read_text(encoding="utf-8")
            json.loads(text)
        except FileNotFoundError:
            raise DissectError(
                f"{directory}: no {SUMMARY} (not a dissected layer folder)"
            ) from None
        except (OSError, ValueError, RecursionError) as e:
            raise DissectError(
                f"{directory}: cannot read {SUMMARY} ({type(e).__name__}: {e}); re-run "
                "`broden dissect` for this layer"
            ) from None
        try:
            return cls.model_validate_json(text, strict=True)
        except ValidationError as e:
            err = e.errors()[0]
            where = _printable(".".join(str(p) for p in err["loc"])) or "(document)"
            raise DissectError(
                f"{directory}: cannot read {SUMMARY}: it is not a dissection summary "
                f"({where}: {err['msg']}); re-run `broden dissect` for this layer"
            ) from None


def _printable(text: str, limit: int = 80) -> str:
    """``text`` (from the file: a key of a tampered summary) on one line, shortened."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[: limit - 1] + "…"
