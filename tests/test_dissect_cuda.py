"""CUDA: the same counts as on the CPU (skipped where no CUDA device is present)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from broden.dissect import dissect, score_activations
from broden.dissect.settings import DissectSettings as S
from tests.dissect_helpers import TinyStore, random_labels_store

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyStore:
    return random_labels_store(tmp_path_factory.mktemp("cuda") / "tiny.zarr", n=20)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", ["exact", "ndl"])
def test_cuda_counts_equal_cpu_counts(tiny, tmp_path, dtype, method):
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.normal(size=(tiny.n, 8, 7, 7)), 0).astype(dtype)
    s = S(quantile=0.05, quantile_method=method, batch_size=6, progress=False)
    cpu = score_activations(tiny.path, acts, None, s.replace(device="cpu"), out=tmp_path / "cpu")
    gpu = score_activations(tiny.path, acts, None, s.replace(device="cuda"), out=tmp_path / "gpu")
    assert gpu.summary.settings.device.startswith("cuda")
    np.testing.assert_array_equal(cpu.thresholds, gpu.thresholds)
    for k in cpu.counts:
        np.testing.assert_array_equal(cpu.counts[k], gpu.counts[k])
    np.testing.assert_array_equal(cpu.iou, gpu.iou)
    np.testing.assert_array_equal(cpu.top_indices, gpu.top_indices)


def test_cuda_dissection_matches_cpu_scoring_of_its_activations(tiny, tmp_path):
    """The model runs on CUDA (workers, pinned memory, non_blocking copies); scoring the
    same CUDA activations on the CPU gives the same counts."""
    from broden.dissect.hooks import LayerCapture
    from broden.dissect.models import parse_normalize, preprocess
    from broden.dissect.zoo import resnet18

    torch.backends.cudnn.deterministic = True
    model = resnet18().cuda().eval()
    res = dissect(
        tiny.path,
        model,
        ["layer2"],
        S(device="cuda", workers=2, quantile=0.05, batch_size=5, progress=False),
        out=tmp_path / "gpu",
    )["layer2"]
    assert res.units == 128 and res.summary.settings.device.startswith("cuda")
    parts = []
    with torch.inference_mode(), LayerCapture(model, ["layer2"]) as cap:
        for a in range(0, tiny.n, 5):  # the store's shards hold 5 images: the same batches
            x = preprocess(
                torch.from_numpy(tiny.images[a : a + 5]).cuda(),
                parse_normalize("imagenet"),
                tiny.images.shape[1],
            )
            parts.append(cap.run(x)["layer2"].float().cpu())
    acts = torch.cat(parts).contiguous().numpy()
    cpu = score_activations(
        tiny.path, acts, None, S(device="cpu", quantile=0.05, progress=False), out=tmp_path / "cpu"
    )
    np.testing.assert_array_equal(cpu.thresholds, res.thresholds)
    for k in cpu.counts:
        np.testing.assert_array_equal(cpu.counts[k], res.counts[k])


def test_cuda_amp_is_float16_and_off_by_default(tiny, tmp_path):
    """Without --amp a CUDA dissection counts the float32 activations exactly as the CPU
    scores them; with --amp the forward pass runs in float16 (other thresholds, close)."""
    from broden.dissect.hooks import LayerCapture
    from broden.dissect.models import parse_normalize, preprocess
    from broden.dissect.zoo import resnet18

    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = False
    model = resnet18().cuda().eval()
    s = S(device="cuda", workers=0, quantile=0.05, batch_size=5, progress=False)
    fp32 = dissect(tiny.path, model, ["layer1"], s, out=tmp_path / "fp32")["layer1"]
    amp = dissect(tiny.path, model, ["layer1"], s.replace(amp=True), out=tmp_path / "amp")
    amp = amp["layer1"]
    assert fp32.summary.settings.amp is False and amp.summary.settings.amp is True
    got: list[torch.dtype] = []
    hook = model.layer1.register_forward_hook(lambda m, i, o: got.append(o.dtype))
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        model(torch.zeros(1, 3, 32, 32, device="cuda"))
    hook.remove()
    assert got == [torch.float16]  # what --amp hands to the (float32) tally
    assert amp.thresholds.shape == fp32.thresholds.shape
    assert not np.array_equal(amp.thresholds, fp32.thresholds)
    scale = np.abs(fp32.thresholds).max()
    assert np.abs(amp.thresholds - fp32.thresholds).max() <= 0.05 * scale
    acts = []
    with torch.inference_mode(), LayerCapture(model, ["layer1"]) as cap:
        for a in range(0, tiny.n, 5):
            x = preprocess(
                torch.from_numpy(tiny.images[a : a + 5]).cuda(),
                parse_normalize("imagenet"),
                tiny.images.shape[1],
            )
            acts.append(cap.run(x)["layer1"].cpu())
    cpu = score_activations(
        tiny.path,
        torch.cat(acts).numpy(),
        None,
        S(device="cpu", quantile=0.05, progress=False),
        out=tmp_path / "cpu",
    )
    np.testing.assert_array_equal(cpu.thresholds, fp32.thresholds)
    np.testing.assert_array_equal(cpu.iou, fp32.iou)
