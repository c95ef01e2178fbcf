"""The built-in models of ``dissect.zoo``: torchvision's (ResNet) and timm's (ViT) key names
and parameter counts, so that their weights load with ``--weights``; fixed-seed weights; the
shapes the dissection reads from their layers."""

from __future__ import annotations

import pytest
import torch

from broden.dissect.layers import LayerInfo, list_layers
from broden.dissect.models import load_model, state_digest
from broden.dissect.zoo import VisionTransformer, resnet50, vit_b_16

#: torchvision's resnet50 (and timm's vit_base_patch16_224, and torchvision's vit_b_16)
RESNET50_PARAMS = 25_557_032
VIT_B_16_PARAMS = 86_567_656


def resnet50_keys() -> set[str]:
    """torchvision's resnet50 state-dict keys, from its naming rules."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{k}" for k in bn}
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            for i in (1, 2, 3):
                keys |= {f"{p}.conv{i}.weight"} | {f"{p}.bn{i}.{k}" for k in bn}
            if b == 0:
                keys |= {f"{p}.downsample.0.weight"} | {f"{p}.downsample.1.{k}" for k in bn}
    return keys


def vit_keys() -> set[str]:
    """timm's vit_base_patch16_224 state-dict keys."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    keys |= {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    for n in range(12):
        for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{n}.{m}.weight", f"blocks.{n}.{m}.bias"}
    return keys


@pytest.fixture(scope="module")
def r50() -> torch.nn.Module:
    return resnet50().eval()


@pytest.fixture(scope="module")
def vit() -> VisionTransformer:
    return vit_b_16().eval()


def by_name(infos: list[LayerInfo]) -> dict[str, LayerInfo]:
    return {i.name: i for i in infos}


def test_resnet50_has_torchvisions_keys_and_parameter_count(r50):
    sd = r50.state_dict()
    assert set(sd) == resnet50_keys() and len(sd) == 320
    for key in ("layer1.0.conv3.weight", "layer4.2.bn3.running_var", "fc.weight"):
        assert key in sd
    assert sd["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # stride on the 3×3 (v1.5)
    assert r50.layer2[0].conv2.stride == (2, 2) and r50.layer2[0].conv1.stride == (1, 1)
    assert sd["layer4.0.downsample.0.weight"].shape == (2048, 1024, 1, 1)
    assert sd["fc.weight"].shape == (1000, 2048)
    assert sum(p.numel() for p in r50.parameters()) == RESNET50_PARAMS


def test_resnet50_weights_come_from_the_seed(r50):
    assert state_digest(resnet50()) == state_digest(r50)
    assert state_digest(resnet50(seed=1)) != state_digest(r50)


def test_resnet50_layer4_is_2048_units_at_7x7(r50):
    info = by_name(list_layers(r50, input_size=224))
    assert info["layer4"].shape == (2, 2048, 7, 7)
    assert (info["layer4"].units, info["layer4"].grid) == (2048, (7, 7))
    assert info["layer3"].shape == (2, 1024, 14, 14)


def test_vit_b_16_has_timms_keys_and_parameter_count(vit):
    sd = vit.state_dict()
    assert set(sd) == vit_keys()
    assert sd["pos_embed"].shape == (1, 197, 768) and sd["cls_token"].shape == (1, 1, 768)
    assert sd["patch_embed.proj.weight"].shape == (768, 3, 16, 16)
    assert sd["blocks.0.attn.qkv.weight"].shape == (2304, 768)
    assert sd["blocks.11.mlp.fc1.weight"].shape == (3072, 768)
    assert sum(p.numel() for p in vit.parameters()) == VIT_B_16_PARAMS
    assert vit.num_prefix_tokens == 1 and load_model(vit).prefix_tokens == 1


def test_vit_b_16_layers_read_as_the_14x14_patch_grid(vit):
    info = by_name(list_layers(vit, input_size=224))
    assert info["blocks.11"].shape == (2, 197, 768)
    assert info["blocks.0.mlp.act"].shape == (2, 197, 3072)
    block = info["blocks.11"]
    assert (block.units, block.grid, block.layout, block.prefix_tokens) == (
        768,
        (14, 14),
        "tokens",
        1,
    )
    assert "768 units × 14×14 (tokens, 1 prefix token dropped)" in block.reading
    act = info["blocks.0.mlp.act"]
    assert (act.units, act.grid) == (3072, (14, 14))
    assert (info["patch_embed"].units, info["patch_embed"].grid) == (768, (14, 14))


def test_vit_b_16_interpolates_its_position_embeddings_for_other_sizes(vit):
    info = by_name(list_layers(vit, input_size=64))
    assert info["blocks.11"].shape == (2, 17, 768)
    assert (info["blocks.11"].units, info["blocks.11"].grid) == (768, (4, 4))


def test_vit_b_16_attention_is_batch_first(vit):
    """Image 0's tokens do not depend on image 1 (attention within an image only)."""
    x = torch.randn(2, 3, 32, 32)
    y = x.clone()
    y[1] = torch.randn(3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(vit(x)[0], vit(y)[0], atol=1e-5)


def test_resnet50_matches_torchvision_where_installed(r50):
    models = pytest.importorskip("torchvision.models")
    theirs = models.resnet50().state_dict()
    ours = r50.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
