"""``--amp``: the model's forward pass under autocast (bfloat16 on the CPU), the maps
dissected as float32; off by default, recorded in the summary and in the cache key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from broden.cli import app
from broden.dissect import dissect
from broden.dissect.models import autocast
from broden.dissect.settings import DissectSettings as S
from tests.dissect_helpers import TinyStore, random_labels_store

MODEL = "dissect.zoo:resnet18"
LAYERS = ["layer1", "layer2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyStore:
    return random_labels_store(tmp_path_factory.mktemp("amp") / "tiny.zarr", n=12)


def test_autocast_is_bfloat16_on_the_cpu_and_a_no_op_when_off():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.ones(1, 3, 8, 8)
    with autocast(torch.device("cpu"), True):
        assert conv(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), False):
        assert conv(x).dtype == torch.float32


def test_amp_on_the_cpu_stays_close_to_float32(tiny, tmp_path):
    s = S(quantile=0.05, batch_size=6, workers=0, top_k=3, progress=False)
    fp32 = dissect(tiny.path, MODEL, LAYERS, s, out=tmp_path / "fp32")
    amp = dissect(tiny.path, MODEL, LAYERS, s.replace(amp=True), out=tmp_path / "amp")
    for la in LAYERS:
        a, b = fp32[la], amp[la]
        assert b.iou.shape == a.iou.shape and b.thresholds.shape == a.thresholds.shape
        assert b.iou.dtype == np.float64 and np.isfinite(b.iou).all()
        assert not np.array_equal(a.thresholds, b.thresholds)  # it did run in bfloat16
        # bfloat16 keeps 8 significant bits: thresholds within a few % of the layer's scale
        scale = np.abs(a.thresholds).max()
        assert np.abs(a.thresholds - b.thresholds).max() <= 0.06 * scale
        assert np.median(np.abs(a.thresholds - b.thresholds)) <= 0.02 * scale
        assert np.abs(a.iou - b.iou).max() < 0.1
        assert a.summary.settings.amp is False and b.summary.settings.amp is True
        assert a.summary.cache_key != b.summary.cache_key


def test_amp_is_in_the_cache_key_and_on_the_command_line(tiny, tmp_path):
    s = S(quantile=0.05, batch_size=6, workers=0, progress=False)
    fp32 = dissect(tiny.path, MODEL, ["layer1"], s, out=tmp_path)["layer1"]
    amp = dissect(tiny.path, MODEL, ["layer1"], s.replace(amp=True), out=tmp_path)["layer1"]
    assert not amp.reused and not np.array_equal(amp.thresholds, fp32.thresholds)
    again = dissect(tiny.path, MODEL, ["layer1"], s, out=tmp_path)["layer1"]  # fp32: recomputed
    assert not again.reused and np.array_equal(again.thresholds, fp32.thresholds)
    args = ["dissect", str(tiny.path), "--model", MODEL, "--layer", "layer1", "--out"]
    args += [str(tmp_path), "--quantile", "0.05", "--batch-size", "6", "--workers", "0"]
    r = CliRunner().invoke(app, [*args, "--amp", "--no-report", "-q"])
    assert r.exit_code == 0, r.output
    assert "reused" not in r.output
    r = CliRunner().invoke(app, [*args, "--amp", "--no-report", "-q"])
    assert r.exit_code == 0 and "reused the counts" in r.output, r.output
    r = CliRunner().invoke(app, [*args, "--amp", "--activations", "x.npy"])
    assert r.exit_code == 2 and "--amp applies to a model's forward pass" in r.output
