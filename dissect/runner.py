"""Running a model on store images: :class:`ModelRunner`, the one place that loads the model
to dissect (or re-loads a recorded one), prepares its input and reads its layers.

A runner holds a loaded model (:func:`broden.dissect.models.load_model`: spec, weights,
fingerprint) on a device and the way its input is made (:class:`InputPrep`: the
normalisation, the input size, the layout of 4-D outputs, the prefix tokens of token
outputs, mixed precision). :meth:`ModelRunner.capture` hooks some layers and returns a
function from a batch of uint8 store images to each layer's (B, U, h, w) maps: images
scaled to [0, 1], resized and normalised (:func:`~broden.dissect.models.preprocess`),
padded to an exported model's fixed batch size, run under autocast when ``amp``, the
outputs turned into unit maps (:func:`~broden.dissect.hooks.to_unit_maps`). The
dissection, segmentation and the report's masks of older results (without
``topmaps.npy``) run models through it; those two only with a model the user names
(:meth:`ModelRunner.from_record` checks it against the recorded fingerprint).

>>> runner = ModelRunner.load("dissect.zoo:resnet18", None, InputPrep(norm, 224), device)
>>> with runner.capture(["layer4"]) as run:                        # doctest: +SKIP
...     maps = run(images)["layer4"]                               # (B, 512, 7, 7)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from broden.dissect.errors import DissectError
from broden.dissect.hooks import LayerCapture, Reading, layout_for, read_unit_maps
from broden.dissect.models import LoadedModel, Normalization, autocast, load_model, preprocess
from broden.dissect.summary import ModelRecord, RunSettings

Maps = dict[str, torch.Tensor]
#: store images (B, S, S, 3) uint8 on the device → each captured layer's (B, U, h, w) maps
Forward = Callable[[torch.Tensor], Maps]


@dataclass(frozen=True)
class InputPrep:
    """How store images become the model's input, and its outputs unit maps."""

    normalization: Normalization
    input_size: int | None = None  # None: the store's image size
    layout: str = "auto"  # one layout, or per layer (broden.dissect.hooks.parse_layouts)
    prefix_tokens: int | None = None
    amp: bool = False


class ModelRunner:
    """A loaded model on ``device``, fed store images prepared by ``prep``."""

    def __init__(self, loaded: LoadedModel, prep: InputPrep, device: torch.device):
        self.loaded, self.prep, self.device = loaded, prep, device
        self.module = loaded.module.to(device)
        #: how each layer's output was read, in the latest batch (:class:`Reading`)
        self.readings: dict[str, Reading] = {}

    @classmethod
    def load(
        cls,
        spec: str | nn.Module,
        weights: str | os.PathLike[str] | None,
        prep: InputPrep,
        device: torch.device,
    ) -> ModelRunner:
        """Build or load the model of ``spec`` with ``weights`` (see
        :mod:`broden.dissect.models`)."""
        return cls(load_model(spec, weights), prep, device)

    @classmethod
    def from_record(
        cls,
        record: ModelRecord,
        settings: RunSettings,
        device: torch.device,
        model: str | nn.Module,
        weights: str | os.PathLike[str] | None = None,
        hint: str = "",
    ) -> ModelRunner:
        """The model a layer was dissected with, as the caller names it: ``model`` (a spec
        or a module) with ``weights``, given by the user, never the spec recorded in
        ``summary.json`` (a results folder is data: reading one never imports or runs
        what it names). The loaded model must have the recorded fingerprint; its input is
        prepared as recorded (normalisation and channel order, input size, amp) and its
        layer read as it was (the layout and prefix tokens used, where recorded).
        ``hint`` ends every error message (what the caller can do instead)."""
        try:
            loaded = load_model(model, weights)
        except DissectError as e:
            raise DissectError(f"the model given does not load ({e}){hint}") from None
        if loaded.fingerprint != record.fingerprint:
            given = f"{loaded.spec}" + (f" with weights {weights}" if weights else "")
            used = f"{record.spec!r}" + (
                f" with weights {record.weights!r}" if record.weights else ""
            )
            raise DissectError(
                f"the model {given} is not the one dissected (fingerprint "
                f"{loaded.fingerprint}, recorded {record.fingerprint} for {used}): give the "
                f"same model spec and weights as `broden dissect` was given{hint}"
            )
        mean, std = record.normalize
        layout, prefix = record.layout, record.prefix_tokens
        if settings.layout_used in ("nchw", "nhwc", "tokens"):  # read as it was read
            layout, prefix = settings.layout_used, settings.prefix_tokens_used
        prep = InputPrep(
            Normalization(settings.normalize or "recorded", mean, std, record.channels),
            record.input_size,
            layout,
            prefix,
            settings.amp,
        )
        return cls(loaded, prep, device)

    def batch_size(self, wanted: int) -> int:
        """Images per batch: ``wanted``, at most an exported model's fixed batch size."""
        fixed = self.loaded.batch_size
        return min(wanted, fixed) if fixed else wanted

    def check_layers(self, layers: Sequence[str]) -> None:
        """:class:`DissectError` (with close matches) for layer names the model lacks."""
        LayerCapture(self.module, layers)

    @contextmanager
    def capture(self, layers: Sequence[str], what: str = "a batch") -> Iterator[Forward]:
        """Hook ``layers``; yield ``run(images)``: (B, S, S, 3) uint8 images on the device →
        layer → (B, U, h, w) maps (``what`` names the images in error messages)."""
        fixed = self.loaded.batch_size
        prep = self.prep

        layouts = {la: layout_for(prep.layout, la) for la in layers}  # once, not per batch

        with LayerCapture(self.module, layers) as cap:

            def run(images: torch.Tensor) -> Maps:
                x = preprocess(images, prep.normalization, prep.input_size)
                n = x.shape[0]
                if fixed is not None and n != fixed:
                    x = torch.cat([x, x[-1:].expand(fixed - n, *x.shape[1:])])
                try:
                    with autocast(self.device, prep.amp):
                        outs = cap.run(x)
                except (DissectError, torch.OutOfMemoryError):
                    raise
                except Exception as e:
                    first = str(e).splitlines()[0] if str(e) else ""
                    raise DissectError(
                        f"the model failed on {what} of shape {tuple(x.shape)}: "
                        f"{type(e).__name__}: {first} ({_failure_hint(e)})"
                    ) from None
                maps = {}
                for la in layers:
                    m, self.readings[la] = read_unit_maps(
                        outs[la], la, layouts[la], prep.prefix_tokens
                    )
                    check_batch(m, x.shape[0], la, outs[la])
                    maps[la] = m[:n]
                return maps

            yield run


def _failure_hint(error: Exception) -> str:
    """What to check when the model's forward pass raised ``error``."""
    text = str(error)
    if isinstance(error, TypeError) and ("argument" in text or "positional" in text):
        return (
            "its forward does not take one batch of images: give a spec whose module does, "
            "e.g. the vision tower of a multimodal model"
        )
    return "check --input-size and --normalize"


def check_batch(maps: torch.Tensor, fed: int, layer: str, raw: object) -> None:
    """:class:`DissectError` unless the unit maps of ``layer`` have one row per image fed:
    a sequence-first ``(T, B, D)`` output (or any other layout whose first axis is not the
    batch) would otherwise be read with the wrong axis as images."""
    if maps.shape[0] == fed:
        return
    shape = tuple(getattr(raw, "shape", ()))
    raise DissectError(
        f"layer {layer!r}: its output {shape} read as {maps.shape[0]} images, but {fed} "
        "were fed; its first axis is not the batch (a sequence-first (tokens, batch, "
        "features) output, as of a transformer with batch_first=False?): hook a layer whose "
        "output is batch-first, or a module that transposes it"
    )
