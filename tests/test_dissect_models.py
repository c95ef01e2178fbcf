"""Models and layer capture: the built-in ResNet-18, weights files, normalisation,
TorchScript and torch.export models, transformer tokens and channels-last outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from broden.dissect import DissectError, dissect, score_activations
from broden.dissect.hooks import LayerCapture, check_layers, to_unit_maps
from broden.dissect.models import load_model, parse_normalize, preprocess
from broden.dissect.settings import DissectSettings as S
from broden.dissect.zoo import resnet18
from tests.dissect_helpers import TinyStore, random_labels_store


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyStore:
    return random_labels_store(tmp_path_factory.mktemp("models") / "tiny.zarr")


def test_zoo_resnet18_matches_torchvisions_layout():
    m = resnet18()
    sd = m.state_dict()
    assert len(sd) == 122
    assert sum(p.numel() for p in m.parameters()) == 11_689_512  # torchvision's resnet18
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.num_batches_tracked",
        "fc.bias",
    ):
        assert key in sd
    with torch.inference_mode():
        assert m.eval()(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)
    # the same seed gives the same network, another seed another one
    assert torch.equal(resnet18().conv1.weight, m.conv1.weight)
    assert not torch.equal(resnet18(seed=1).conv1.weight, m.conv1.weight)


def test_weights_load_through_dataparallel_checkpoints(tmp_path):
    src = resnet18(seed=3)
    ckpt = {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}
    torch.save(ckpt, tmp_path / "w.pth")
    loaded = load_model("dissect.zoo:resnet18", tmp_path / "w.pth")
    assert torch.equal(loaded.module.fc.weight, src.fc.weight)
    # the fingerprint is a digest of spec and weights: reproducible, and weights change it
    assert loaded.fingerprint == load_model("dissect.zoo:resnet18", tmp_path / "w.pth").fingerprint
    assert loaded.fingerprint != load_model("dissect.zoo:resnet18").fingerprint
    sd = src.state_dict()
    del sd["fc.bias"]
    torch.save(sd, tmp_path / "short.pth")
    with pytest.raises(DissectError, match=r"missing 1 keys \(e.g. fc.bias\)"):
        load_model("dissect.zoo:resnet18", tmp_path / "short.pth")


def test_normalisation_by_name_or_values():
    assert parse_normalize("imagenet").mean == (0.485, 0.456, 0.406)
    assert parse_normalize("none").std == (1.0, 1.0, 1.0)
    n = parse_normalize("0.5,0.5,0.5/0.25,0.25,0.25")
    images = torch.full((1, 4, 4, 3), 255, dtype=torch.uint8)
    x = preprocess(images, n, None)
    assert x.shape == (1, 3, 4, 4) and torch.allclose(x, torch.full_like(x, 2.0))
    assert preprocess(images, n, 8).shape == (1, 3, 8, 8)
    with pytest.raises(DissectError, match="MEAN,MEAN,MEAN/STD,STD,STD"):
        parse_normalize("0.5,0.5/1,1,1")
    with pytest.raises(DissectError, match="MEAN,MEAN,MEAN/STD,STD,STD"):
        parse_normalize("nan,0.5,0.5/1,1,1")


def test_normalize_presets_and_0_255_units():
    """A 0-255 mean given as [0, 1] units (a model that would see nearly constant
    inputs, and find no detector) is refused; with @255 it is read as such."""
    assert parse_normalize("clip").mean == (0.48145466, 0.4578275, 0.40821073)
    assert parse_normalize("CLIP").std == (0.26862954, 0.26130258, 0.27577711)
    assert parse_normalize("inception").mean == (0.5, 0.5, 0.5)
    for caffe in ("123.68,116.78,103.94/1,1,1", "0.5,0.5,0.5/58.4,57.1,57.4"):
        with pytest.raises(DissectError, match="look like 0-255 values.*@255"):
            parse_normalize(caffe)
    n = parse_normalize("127.5,127.5,127.5/127.5,127.5,127.5@255")
    assert n.mean == (0.5, 0.5, 0.5) and n.std == (0.5, 0.5, 0.5)
    images = torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)
    assert torch.allclose(preprocess(images, n, None), torch.ones(1, 3, 2, 2))


def test_tokens_become_the_patch_grid_without_class_and_register_tokens():
    B, g, D = 2, 3, 4
    grid = torch.arange(B * g * g * D, dtype=torch.float32).view(B, g * g, D)
    cls = torch.full((B, 1, D), -1.0)
    regs = torch.full((B, 4, D), -2.0)
    maps = to_unit_maps(torch.cat([cls, grid], 1), "vit")
    assert maps.shape == (B, D, g, g)
    assert torch.equal(maps[1, 2, 0, 1], grid[1, 1, 2])  # token 1 = row 0, column 1
    with_regs = to_unit_maps(torch.cat([cls, regs, grid], 1), "dino")  # auto: 5 prefix tokens
    assert torch.equal(with_regs, maps)
    assert torch.equal(to_unit_maps(torch.cat([cls, regs, grid], 1), "d", prefix_tokens=5), maps)
    with pytest.raises(DissectError, match="--prefix-tokens"):
        to_unit_maps(torch.cat([cls, grid], 1), "vit", prefix_tokens=3)


def test_channels_last_outputs_are_recognised():
    x = torch.randn(2, 7, 7, 96)
    assert torch.equal(to_unit_maps(x, "swin"), x.permute(0, 3, 1, 2))
    y = torch.randn(2, 96, 7, 7)
    assert torch.equal(to_unit_maps(y, "conv"), y)
    with pytest.raises(DissectError, match="7 units of 7×96: not square"):
        to_unit_maps(x, "forced", layout="nchw")  # a wrong layout, forced: refused
    square = torch.randn(2, 7, 7, 7)
    assert torch.equal(to_unit_maps(square, "forced", layout="nchw"), square)
    assert to_unit_maps(torch.randn(2, 10), "fc").shape == (2, 10, 1, 1)


def test_layer_capture_takes_several_dotted_layers_in_one_pass():
    m = resnet18().eval()
    with torch.inference_mode(), LayerCapture(m, ["layer2.1.conv2", "layer3", "fc"]) as cap:
        outs = cap.run(torch.randn(1, 3, 64, 64))
    assert outs["layer2.1.conv2"].shape == (1, 128, 8, 8)
    assert outs["layer3"].shape == (1, 256, 4, 4)
    assert outs["fc"].shape == (1, 1000)
    assert not m.layer3._forward_hooks  # hooks removed afterwards
    with pytest.raises(DissectError, match="did you mean layer2.1.conv2"):
        check_layers(m, ["layer2.1.cnv2"])


class TokenNet(nn.Module):
    """A ViT-shaped toy: 8×8 patches → tokens with a class token, one linear block."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 6, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.block = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        return self.block(t)


def test_transformer_tokens_end_to_end(tiny, tmp_path):
    torch.manual_seed(0)
    model = TokenNet().eval()
    res = dissect(
        tiny.path,
        model,
        ["block"],
        S(workers=0, quantile=0.1, normalize="none", progress=False),
        out=tmp_path,
    )["block"]
    assert res.units == 6 and res.summary.activation_shape == (4, 4)  # 32 px / 8
    with torch.inference_mode():
        x = torch.from_numpy(tiny.images).permute(0, 3, 1, 2).float() / 255
        tokens = model(x)
    acts = tokens[:, 1:].reshape(tiny.n, 4, 4, 6).permute(0, 3, 1, 2).numpy()
    ref = score_activations(
        tiny.path, acts, None, S(quantile=0.1, progress=False), out=tmp_path / "ref"
    )
    np.testing.assert_allclose(res.thresholds, ref.thresholds, rtol=1e-6)
    np.testing.assert_allclose(res.iou, ref.iou, atol=0.02)


class SeqFirstNet(nn.Module):
    """Patch tokens through a transformer layer that is sequence-first, (T, B, D), as
    open_clip's before batch-first: ``tokens`` outputs (T, B, D)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 8, 8)
        self.tokens = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).permute(2, 0, 1)  # (T, B, D)
        return self.tokens(t)


class TwoInputs(nn.Module):
    """A model whose forward wants images and text, like a full CLIP model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.conv(image)


@pytest.mark.parametrize("batch", [1, 4])
def test_a_sequence_first_output_is_refused_not_read_on_the_wrong_axis(tiny, tmp_path, batch):
    settings = S(workers=0, quantile=0.1, normalize="none", batch_size=batch, progress=False)
    with pytest.raises(DissectError, match=r"read as 16 images, but \d+ were fed.*sequence"):
        dissect(tiny.path, SeqFirstNet().eval(), ["tokens"], settings, out=tmp_path)


def test_a_model_wanting_more_than_images_gets_a_matching_hint(tiny, tmp_path):
    settings = S(workers=0, quantile=0.1, normalize="none", progress=False)
    with pytest.raises(DissectError, match="does not take one batch of images.*vision tower"):
        dissect(tiny.path, TwoInputs().eval(), ["conv"], settings, out=tmp_path)


class SmallConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 5, 3, 2, 1), nn.ReLU(), nn.Conv2d(5, 7, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torch_export_models_keep_their_layer_names(tiny, tmp_path):
    torch.manual_seed(1)
    eager = SmallConv().eval()
    x = torch.randn(4, 3, 32, 32)
    ep = torch.export.export(eager, (x,))  # a static batch of 4
    torch.export.save(ep, tmp_path / "small.pt2")
    got = dissect(
        tiny.path,
        str(tmp_path / "small.pt2"),
        ["features.2"],
        S(workers=0, quantile=0.1, progress=False),
        out=tmp_path / "a",
    )["features.2"]
    want = dissect(
        tiny.path,
        eager,
        ["features.2"],
        S(workers=0, quantile=0.1, progress=False),
        out=tmp_path / "b",
    )["features.2"]
    assert got.summary.settings.batch_size == 4
    np.testing.assert_allclose(got.thresholds, want.thresholds, rtol=1e-5)
    np.testing.assert_allclose(got.iou, want.iou, atol=0.02)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_models_dissect_their_outputs(tiny, tmp_path):
    torch.manual_seed(2)
    eager = SmallConv().eval()
    torch.jit.save(torch.jit.script(eager), tmp_path / "small.ts")
    with pytest.raises(DissectError, match="TorchScript models cannot take forward hooks"):
        dissect(
            tiny.path,
            str(tmp_path / "small.ts"),
            ["features.2"],
            S(workers=0, progress=False),
            out=tmp_path,
        )
    got = dissect(
        tiny.path,
        str(tmp_path / "small.ts"),
        ["output"],
        S(workers=0, quantile=0.1, progress=False),
        out=tmp_path / "a",
    )["output"]
    want = dissect(
        tiny.path,
        eager,
        ["features.2"],
        S(workers=0, quantile=0.1, progress=False),
        out=tmp_path / "b",
    )["features.2"]
    np.testing.assert_allclose(got.thresholds, want.thresholds, rtol=1e-5)
    assert got.units == 7


def test_input_size_resizes_images_for_the_model(tiny, tmp_path):
    torch.manual_seed(3)
    model = SmallConv().eval()
    r = dissect(
        tiny.path,
        model,
        ["features.2"],
        S(input_size=64, workers=0, quantile=0.1, progress=False),
        out=tmp_path,
    )["features.2"]
    assert r.summary.activation_shape == (16, 16)  # 64 px through two stride-2 convs
    assert r.summary.settings.input_size == 64


class RegisterViT(nn.Module):
    """A ViT with a class token and 16 registers (timm's ``num_prefix_tokens = 17``) and
    patches of 16: at 112 px a 7×7 grid, 66 tokens, of which ``T - ⌊√T⌋²`` would drop 2.
    The output's token k carries the value k in every feature, so the grid read shows
    which tokens were taken."""

    num_prefix_tokens = 17

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 4, 16, 16)
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, 49, 4)
        tokens = torch.arange(17 + t.shape[1], dtype=t.dtype, device=t.device)
        return self.out(tokens.view(1, -1, 1).expand(len(t), -1, 4) + 0 * t.sum())


def test_register_tokens_come_from_the_model_not_the_guess(tiny, tmp_path):
    from broden.dissect.models import model_prefix_tokens

    model = RegisterViT().eval()
    assert model_prefix_tokens(model) == 17
    hf = nn.Identity()
    hf.config = type("Config", (), {"num_register_tokens": 4})()  # as Dinov2WithRegisters
    assert model_prefix_tokens(hf) == 5 and model_prefix_tokens(nn.Identity()) is None
    with torch.inference_mode():
        tokens = model(torch.zeros(2, 3, 112, 112))
    maps = to_unit_maps(tokens, "out", "auto", model_prefix_tokens(model))
    assert maps.shape == (2, 4, 7, 7)
    expect = 17 + torch.arange(49, dtype=maps.dtype).view(7, 7)  # row-major after the prefix
    assert torch.equal(maps[1, 3], expect)
    assert to_unit_maps(tokens, "out").shape[2:] == (8, 8)  # what the guess alone would read
    s = S(workers=0, quantile=0.1, normalize="none", input_size=112, progress=False)
    res = dissect(tiny.path, model, ["out"], s, out=tmp_path)["out"]
    assert res.summary.activation_shape == (7, 7)
    assert res.summary.model.prefix_tokens == 17 and res.summary.settings.prefix_tokens == 17
    forced = dissect(tiny.path, model, ["out"], s.replace(prefix_tokens=2), out=tmp_path / "f")
    assert forced["out"].summary.activation_shape == (8, 8)  # --prefix-tokens overrides


def test_a_forced_layout_that_gives_non_square_maps_is_refused():
    stage = torch.zeros(2, 768, 7, 7)  # NCHW, forced to be read as NHWC
    with pytest.raises(DissectError, match=r"--layout nhwc.*7 units of 768×7: not square"):
        to_unit_maps(stage, "stage", "nhwc")
    assert to_unit_maps(stage, "stage", "nchw").shape == (2, 768, 7, 7)
    assert to_unit_maps(stage.permute(0, 2, 3, 1), "stage", "nhwc").shape == (2, 768, 7, 7)


def test_a_pooled_layer_gets_a_warning(tiny, tmp_path):
    acts = np.random.default_rng(0).normal(size=(tiny.n, 3, 1, 1)).astype(np.float32)
    res = score_activations(tiny.path, acts, "pool", S(quantile=0.1, progress=False),
                            out=tmp_path)  # fmt: skip
    assert any(n.startswith("warning: pool has 1×1 maps") for n in res.notes)
    acts = np.random.default_rng(0).normal(size=(tiny.n, 3, 2, 2)).astype(np.float32)
    res = score_activations(tiny.path, acts, "conv", S(quantile=0.1, progress=False),
                            out=tmp_path)  # fmt: skip
    assert not any("1×1" in n for n in res.notes)
