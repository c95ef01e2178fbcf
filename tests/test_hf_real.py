"""``hf:`` models through the real Hugging Face transformers (it installs beside the pinned
CPU torch; timm and open_clip do not, see tests/test_families.py): random-weight models
written with ``save_pretrained`` and loaded back offline from the folder, with the image
processor saved beside them. The maps broden reads are compared with the hidden states
read by hand (class and register tokens dropped, row-major grid), so a wrong axis, a wrong
prefix or a transposed grid fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from broden.dissect import DissectError, dissect
from broden.dissect.layers import list_layers
from broden.dissect.models import CHANNEL_ORDER, load_model, parse_normalize
from broden.dissect.report import write_report
from broden.dissect.runner import InputPrep, ModelRunner
from broden.dissect.settings import DissectSettings as S
from tests.dissect_helpers import TinyStore, random_labels_store

T = pytest.importorskip("transformers")

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 64}  # fmt: skip
MEAN, STD = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]


def block(module: torch.nn.Module, kind: str, index: int) -> str:
    """The name of the ``index``-th module of class ``kind`` (transformers 4.x calls a
    ViT's blocks ``encoder.layer.N``, 5.x ``layers.N``: the test does not care)."""
    names = [n for n, m in module.named_modules() if type(m).__name__ == kind]
    return names[index]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    return random_labels_store(tmp_path_factory.mktemp("hf") / "tiny.zarr", n=6)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ViT at 32 px with 8 px patches (a 4×4 grid after the class token) and a
    ViTImageProcessor of its own mean, std and size."""
    folder = tmp_path_factory.mktemp("hf") / "vit"
    torch.manual_seed(0)
    cfg = T.ViTConfig(**SMALL, image_size=32, patch_size=8)
    T.ViTModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    size = {"height": 32, "width": 32}
    T.ViTImageProcessor(size=size, image_mean=MEAN, image_std=STD, resample=3).save_pretrained(
        folder
    )
    return folder


def by_hand(module: torch.nn.Module, name: str, x: torch.Tensor, prefix: int) -> torch.Tensor:
    """``name``'s hidden states for input ``x``, tokens after ``prefix`` as a g×g grid."""
    out: dict[str, torch.Tensor] = {}
    layer = dict(module.named_modules())[name]
    handle = layer.register_forward_hook(lambda m, i, o: out.setdefault("o", o))
    with torch.inference_mode():
        module(x)
    handle.remove()
    h = out["o"][0] if isinstance(out["o"], tuple) else out["o"]
    B, n, D = h.shape
    g = int((n - prefix) ** 0.5)
    return h[:, prefix:].reshape(B, g, g, D).permute(0, 3, 1, 2)


def test_a_saved_vit_loads_with_its_image_processor(vit_dir: Path) -> None:
    loaded = load_model(f"hf:{vit_dir}")
    p = loaded.preprocessing
    assert p is not None and p.source == "the image processor of vit"
    assert (p.input_size, p.mean, p.std) == (32, tuple(MEAN), tuple(STD))
    assert p.interpolation == "bicubic"  # resample=3, PIL's number
    assert (loaded.input_size, loaded.patch_size) == (32, 8)
    assert loaded.prefix_tokens is None  # a plain ViT says nothing: 17 tokens → 1 + 4×4
    name = block(loaded.module, "ViTLayer", 1)
    norm = parse_normalize(",".join(map(str, MEAN)) + "/" + ",".join(map(str, STD)))
    runner = ModelRunner(loaded, InputPrep(norm, 32), torch.device("cpu"))
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    with torch.inference_mode(), runner.capture([name]) as run:
        maps = run(images)[name]
    x = (images.permute(0, 3, 1, 2) / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD
    ).view(1, 3, 1, 1)
    expected = by_hand(loaded.module, name, x, prefix=1)
    assert maps.shape == (3, 32, 4, 4)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-5)
    r = runner.readings[name]
    assert (r.layout, r.prefix_tokens, r.units, r.grid) == ("tokens", 1, 32, (4, 4))


def test_a_saved_vit_dissected_with_the_recorded_preprocessing(
    vit_dir: Path, tiny: TinyStore, tmp_path: Path
) -> None:
    name = block(load_model(f"hf:{vit_dir}").module, "ViTLayer", 1)
    res = dissect(tiny.path, f"hf:{vit_dir}", [name], S(workers=0, quantile=0.1, progress=False),
                  out=tmp_path, revision="main")[name]  # fmt: skip
    summary = json.loads((res.directory / "summary.json").read_text())
    assert summary["model"]["normalize"] == [MEAN, STD]  # the processor's, not ImageNet's
    assert summary["model"]["input_size"] == 32 and summary["model"]["revision"] == "main"
    assert summary["settings"]["layout_used"] == "tokens"
    assert summary["settings"]["prefix_tokens_used"] == 1  # guessed, and recorded
    assert summary["units"] == 32 and summary["activation_shape"] == [4, 4]
    assert summary["settings"]["normalize"] == "from the image processor of vit"
    page = write_report(tmp_path).read_text()  # the numbers used, and the reading, shown
    assert "from the image processor of vit: mean 0.1, 0.2, 0.3, std 0.4, 0.5, 0.6" in page
    assert "tokens, 1 prefix token dropped" in page


def test_the_models_output_object_gives_its_last_hidden_state(vit_dir: Path) -> None:
    infos = {i.name: i for i in list_layers(f"hf:{vit_dir}")}
    assert infos[block(load_model(f"hf:{vit_dir}").module, "ViTLayer", 0)].grid == (4, 4)
    loaded = load_model(f"hf:{vit_dir}")
    runner = ModelRunner(loaded, InputPrep(parse_normalize("none"), 32), torch.device("cpu"))
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.inference_mode(), runner.capture(["output", "output.last_hidden_state"]) as run:
        got = run(images)
    assert torch.equal(got["output"], got["output.last_hidden_state"])
    assert got["output"].shape == (2, 32, 4, 4)


def test_an_input_size_off_the_patch_grid_is_refused(
    vit_dir: Path, tiny: TinyStore, tmp_path: Path
) -> None:
    name = block(load_model(f"hf:{vit_dir}").module, "ViTLayer", 1)
    with pytest.raises(DissectError, match="not a multiple of its patch size 8.*--input-size 32"):
        dissect(tiny.path, f"hf:{vit_dir}", [name], S(workers=0, input_size=36, progress=False),
                out=tmp_path)  # fmt: skip


def test_dinov2_with_16_registers_drops_17_tokens(tmp_path: Path) -> None:
    torch.manual_seed(1)
    cfg = T.Dinov2WithRegistersConfig(**SMALL, image_size=56, patch_size=14,
                                      num_register_tokens=16)  # fmt: skip
    T.Dinov2WithRegistersModel(cfg).save_pretrained(tmp_path / "dino")
    loaded = load_model(f"hf:{tmp_path / 'dino'}")
    assert loaded.prefix_tokens == 17 and loaded.patch_size == 14
    name = block(loaded.module, "Dinov2WithRegistersLayer", 1)
    infos = {i.name: i for i in list_layers(loaded.module, input_size=56)}
    # 17 dropped, where the guess T - ⌊√T⌋² would drop 33 - 25 = 8
    assert (infos[name].shape, infos[name].prefix_tokens, infos[name].grid) == (
        (2, 33, 32), 17, (4, 4),
    )  # fmt: skip
    runner = ModelRunner(loaded, InputPrep(parse_normalize("none"), 56, "auto", 17),
                         torch.device("cpu"))  # fmt: skip
    images = torch.randint(0, 256, (2, 56, 56, 3), dtype=torch.uint8)
    with torch.inference_mode(), runner.capture([name]) as run:
        maps = run(images)[name]
    expected = by_hand(loaded.module, name, images.permute(0, 3, 1, 2) / 255, prefix=17)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-5)


def test_clip_gives_its_image_tower_with_clips_statistics(tiny: TinyStore, tmp_path: Path) -> None:
    torch.manual_seed(2)
    vision = {**SMALL, "image_size": 32, "patch_size": 16}
    text = {**SMALL, "num_hidden_layers": 1, "vocab_size": 100, "bos_token_id": 0,
            "eos_token_id": 1, "pad_token_id": 1}  # fmt: skip
    cfg = T.CLIPConfig(vision_config=vision, text_config=text)
    folder = tmp_path / "clip"
    T.CLIPModel(cfg).save_pretrained(folder)
    crop = {"height": 32, "width": 32}
    T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=crop).save_pretrained(folder)
    loaded = load_model(f"hf:{folder}")
    assert "text_model" not in dict(loaded.module.named_modules())  # the image tower only
    p = loaded.preprocessing
    assert p is not None and p.crop is True and p.input_size == 32
    assert p.mean == parse_normalize("clip").mean and p.std == parse_normalize("clip").std
    name = block(loaded.module, "CLIPEncoderLayer", 1)
    res = dissect(tiny.path, f"hf:{folder}", [name, "output.pooler_output"],
                  S(workers=0, quantile=0.1, progress=False), out=tmp_path / "out")  # fmt: skip
    assert res[name].summary.activation_shape == (2, 2) and res[name].units == 32
    assert res[name].summary.model.normalize == (p.mean, p.std)
    pooled = res["output.pooler_output"]
    assert pooled.summary.activation_shape == (1, 1)
    assert pooled.summary.settings.layout_used == "vector"
    assert any("1×1" in n for n in pooled.notes)  # a pooled layer is flagged


def test_caffe_input_is_bgr_in_0_255_minus_the_mean() -> None:
    norm = parse_normalize("caffe")
    assert norm.channels == CHANNEL_ORDER["caffe"] == "bgr"
    from broden.dissect.models import preprocess

    images = torch.tensor([[[[10, 20, 30]]]], dtype=torch.uint8)  # one RGB pixel
    x = preprocess(images, norm, None).flatten()
    torch.testing.assert_close(x, torch.tensor([30 - 103.939, 20 - 116.779, 10 - 123.68]))
    explicit = parse_normalize("103.939,116.779,123.68/1,1,1@255+bgr")
    assert (explicit.mean, explicit.std, explicit.channels) == (norm.mean, norm.std, "bgr")
