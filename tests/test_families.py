"""Model specs by family (``timm:``, ``hf:``, ``open_clip:``) through the real loading code
of broden, against stand-ins of the three libraries (``tests/stubs``: none of them installs
beside the pinned CPU torch here) that build a tiny ViT whose token k carries k."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from broden.dissect import DissectError, dissect
from broden.dissect.hooks import to_unit_maps
from broden.dissect.models import load_model
from broden.dissect.settings import DissectSettings as S
from tests.dissect_helpers import TinyStore, random_labels_store

STUBS = Path(__file__).resolve().parent / "stubs"


def _forget_stubs() -> None:
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(STUBS)):
            del sys.modules[name]


@pytest.fixture(autouse=True)
def stub_libraries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The stand-ins instead of the real libraries (transformers may be installed: the
    real one is tested in tests/test_hf_real.py), forgotten again afterwards."""
    monkeypatch.syspath_prepend(str(STUBS))
    for name in ("timm", "transformers", "open_clip", "vit"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    _forget_stubs()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    return random_labels_store(tmp_path_factory.mktemp("families") / "tiny.zarr")


def grid_of(loaded, layer: str, size: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The unit maps of ``layer`` for a batch of 2 at ``size``, read as broden reads them."""
    out = {}
    handle = dict(loaded.module.named_modules())[layer].register_forward_hook(
        lambda m, i, o: out.setdefault("o", o)
    )
    with torch.inference_mode():
        loaded.module(torch.zeros(2, 3, size, size))
    handle.remove()
    return to_unit_maps(out["o"], layer, "auto", loaded.prefix_tokens)


def test_timm_by_name_with_its_pretrained_config() -> None:
    import timm

    loaded = load_model("timm:vit_tiny_reg4")
    assert timm.CREATED == [("vit_tiny_reg4", False)]
    p = loaded.preprocessing
    assert p is not None and p.source == "timm pretrained config"
    assert (p.input_size, p.mean, p.std, p.interpolation, p.crop) == (
        64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", True,
    )  # fmt: skip
    assert loaded.input_size == 64 and loaded.prefix_tokens == 5
    maps = grid_of(loaded, "blocks.1", 64)  # 5 prefix tokens, then a 4×4 grid
    assert maps.shape == (2, 4, 4, 4)
    assert torch.equal(maps[0, 0], 5 + torch.arange(16.0).view(4, 4))
    load_model("timm:vit_tiny_reg4:pretrained")
    assert timm.CREATED[-1] == ("vit_tiny_reg4", True)
    with pytest.raises(DissectError, match=r"timm:nope: RuntimeError: Unknown model \(nope\)"):
        load_model("timm:nope")
    with pytest.raises(DissectError, match="expected timm:NAME or timm:NAME:pretrained"):
        load_model("timm:vit_tiny_reg4:yes")


def test_hf_from_a_saved_folder_with_its_image_processor(tmp_path: Path) -> None:
    folder = tmp_path / "dinov2-reg"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"num_register_tokens": 2}))
    size = {"height": 32, "width": 32}
    proc = {"image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.25],
            "size": size, "do_center_crop": False, "resample": 3}  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(proc))
    loaded = load_model(f"hf:{folder}")
    p = loaded.preprocessing
    assert p is not None and "image processor" in p.source
    assert (p.input_size, p.mean, p.std, p.crop) == (32, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25), False)
    assert loaded.prefix_tokens == 3  # the class token and 2 registers, from the config
    maps = grid_of(loaded, "blocks.0", 32)  # an HF layer's tuple output: its hidden states
    assert maps.shape == (2, 4, 2, 2) and torch.equal(maps[1, 2], 3 + torch.arange(4.0).view(2, 2))
    (folder / "preprocessor_config.json").unlink()
    bare = load_model(f"hf:{folder}")
    assert bare.preprocessing is not None and bare.preprocessing.mean is None


def test_open_clip_visual_tower_with_clips_statistics() -> None:
    loaded = load_model("open_clip:ViT-Tiny-16")
    p = loaded.preprocessing
    assert p is not None and p.mean == (0.48145466, 0.4578275, 0.40821073)
    assert p.std == (0.26862954, 0.26130258, 0.27577711) and p.input_size == 48
    assert "text" not in dict(loaded.module.named_modules())  # the visual tower only
    assert grid_of(loaded, "blocks.1", 48).shape == (2, 4, 3, 3)


def test_a_missing_library_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for family, module in (("timm", "timm"), ("hf", "transformers"), ("open_clip", "open_clip")):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
        with pytest.raises(
            DissectError, match=rf"needs the {module} package.*'broden\[{family}\]'"
        ):
            load_model(f"{family}:x")


def test_a_timm_model_dissected_at_its_own_input_size(tiny: TinyStore, tmp_path: Path) -> None:
    res = dissect(tiny.path, "timm:vit_tiny_reg4", ["blocks.1"],
                  S(workers=0, quantile=0.1, progress=False), out=tmp_path)["blocks.1"]  # fmt: skip
    assert res.summary.activation_shape == (4, 4) and res.units == 4
    assert res.summary.model.input_size == 64 and res.summary.model.prefix_tokens == 5
    assert res.summary.model.spec == "timm:vit_tiny_reg4"
    assert res.summary.model.normalize == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # its config's
    assert res.summary.settings.normalize == "from timm pretrained config"
    given = S(workers=0, quantile=0.1, normalize="imagenet", progress=False)
    over = dissect(tiny.path, "timm:vit_tiny_reg4", ["blocks.1"], given, out=tmp_path / "i")
    assert over["blocks.1"].summary.model.normalize[0] == (0.485, 0.456, 0.406)
