"""How layer outputs are read, beyond one tensor per module: a layout per layer, parts of a
module's dict-like or tuple output (``MODULE.KEY``), the reading recorded in
``summary.json`` (layout used, prefix tokens dropped), and maps that change size between
batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from broden.cli import app
from broden.dissect import DissectError, dissect, score_activations
from broden.dissect.hooks import LayerCapture, check_layers, parse_layouts, read_unit_maps
from broden.dissect.settings import DissectSettings as S
from broden.dissect.summary import LayerSummary
from tests.dissect_helpers import TinyStore, random_labels_store

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    return random_labels_store(tmp_path_factory.mktemp("reading") / "tiny.zarr")


def settings(**kw: object) -> S:
    return S(workers=0, quantile=0.1, normalize="none", progress=False, **kw)  # type: ignore[arg-type]


class TwoLayouts(nn.Module):
    """A 4×4 conv map (B, 5, 4, 4), and the same map channels-last as ``stage``
    (B, 4, 4, 5), and a stage whose NHWC and NCHW readings are both square (B, 4, 4, 4),
    which auto reads as channels-first."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 8, 8)
        self.stage = nn.Identity()
        self.ambiguous = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.stage(y.permute(0, 2, 3, 1))
        return self.ambiguous(y[:, :4].permute(0, 2, 3, 1))


def test_layouts_per_layer_parse_with_a_default() -> None:
    assert parse_layouts("auto") == {"": "auto"}
    assert parse_layouts("nhwc, blocks.3=tokens") == {"": "nhwc", "blocks.3": "tokens"}
    assert parse_layouts("a.b=nchw") == {"": "auto", "a.b": "nchw"}
    for bad, why in (("nhcw", "not a layout"), ("x=tok", "not a layout"), ("=nchw", "not a"),
                     ("nchw,nhwc", "twice"), ("a=nchw,a=nhwc", "twice")):  # fmt: skip
        with pytest.raises(DissectError, match=why):
            parse_layouts(bad)
    with pytest.raises(DissectError, match="not a layout"):
        S(layout="conv=sideways")


def test_each_layer_read_in_its_own_layout(tiny: TinyStore, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoLayouts().eval()
    layers = ["conv", "stage", "ambiguous"]
    auto = dissect(tiny.path, model, layers, settings(), out=tmp_path / "auto")
    per = dissect(tiny.path, model, layers, settings(layout="ambiguous=nhwc"), out=tmp_path / "per")
    # conv and stage are one map read two ways: the same results
    np.testing.assert_array_equal(auto["conv"].iou, auto["stage"].iou)
    assert [auto[la].summary.settings.layout_used for la in layers] == ["nchw", "nhwc", "nchw"]
    assert per["ambiguous"].summary.settings.layout_used == "nhwc"
    assert per["ambiguous"].summary.model.layout == "nhwc"  # its own, in its record
    assert per["conv"].summary.model.layout == "auto"
    np.testing.assert_array_equal(per["ambiguous"].iou, auto["conv"].iou[:4])  # its 4 units
    assert auto["ambiguous"].units == 4 and auto["ambiguous"].summary.activation_shape == (4, 4)
    with pytest.raises(DissectError, match="names layer 'stag', which is not dissected"):
        dissect(tiny.path, model, layers, settings(layout="stag=nhwc"), out=tmp_path / "x")


class DictOut(nn.Module):
    """An inner module returning a dict of two maps, and one returning a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 8, 8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.conv(x)
        return {"features": y, "doubled": 2 * y}


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = DictOut()
        self.pair = PairOut()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return self.pair(out["features"])[1]


class PairOut(nn.Module):
    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y, -y


def test_parts_of_a_modules_output_are_layers() -> None:
    torch.manual_seed(0)
    model = Wrapper().eval()
    x = torch.randn(2, 3, 32, 32)
    names = ["inner.features", "inner.doubled", "pair.1", "inner"]
    with torch.inference_mode(), LayerCapture(model, names) as cap:
        outs = cap.run(x)
    assert torch.equal(outs["inner.doubled"], 2 * outs["inner.features"])
    assert torch.equal(outs["pair.1"], -outs["inner.features"])
    with pytest.raises(DissectError, match=r"keys \['features', 'doubled'\]: pick one as a layer"):
        read_unit_maps(outs["inner"], "inner")
    maps, r = read_unit_maps({"last_hidden_state": torch.zeros(2, 17, 3), "x": 1}, "hf")
    assert (r.layout, r.prefix_tokens, r.grid, maps.shape) == ("tokens", 1, (4, 4), (2, 3, 4, 4))
    for name, why in (("inner.nothing", "the output has no key 'nothing'"),
                      ("pair.2", r"cannot take '2' of a tuple \(2 elements\)")):  # fmt: skip
        with (
            torch.inference_mode(),
            LayerCapture(model, [name]) as cap,
            pytest.raises(DissectError, match=why),
        ):
            cap.run(x)
    with pytest.raises(DissectError, match="did you mean inner.conv"):
        check_layers(model, ["inner.cnv"])  # a misspelt submodule, not a key
    with pytest.raises(DissectError, match="has no layer 'nowhere.x'"):
        check_layers(model, ["nowhere.x"])


def test_a_dict_part_dissects_like_the_tensor_it_holds(tiny: TinyStore, tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = Wrapper().eval()
    got = dissect(tiny.path, model, ["inner.features", "inner.conv"], settings(), out=tmp_path)
    np.testing.assert_array_equal(got["inner.features"].iou, got["inner.conv"].iou)
    np.testing.assert_array_equal(got["inner.features"].thresholds, got["inner.conv"].thresholds)


class Growing(nn.Module):
    """A conv whose map grows after the first call: the second batch's maps are larger."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.out = nn.Identity()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        y = self.conv(x)
        if self.calls > 2:  # the probe and the first batch are fine
            y = nn.functional.pad(y, (0, 1, 0, 1))
        return self.out(y)


def test_maps_changing_size_between_batches_are_one_error(tiny: TinyStore, tmp_path: Path) -> None:
    with pytest.raises(DissectError) as e:
        dissect(tiny.path, Growing().eval(), ["out"], settings(batch_size=4), out=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "maps of 33×33 for" in msg and "but 32×32 for the first" in msg


def test_the_reading_is_recorded_and_reused(tiny: TinyStore, tmp_path: Path) -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, 6, 8, 8)
            self.cls = nn.Parameter(torch.randn(1, 2, 6))
            self.block = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.patch(x).flatten(2).transpose(1, 2)
            return self.block(torch.cat([self.cls.expand(len(t), -1, -1), t], 1))

    torch.manual_seed(0)
    model = Tokens().eval()
    first = dissect(tiny.path, model, ["block"], settings(), out=tmp_path)["block"]
    s = first.summary.settings
    # asked for auto, read as tokens after the 2 guessed
    assert (s.layout, s.prefix_tokens, s.layout_used, s.prefix_tokens_used) == (
        "auto", None, "tokens", 2,
    )  # fmt: skip
    again = dissect(tiny.path, model, ["block"], settings(), out=tmp_path)["block"]
    assert again.summary.reused and again.summary.settings.prefix_tokens_used == 2
    written = json.loads((tmp_path / "block" / "summary.json").read_text())
    assert written["settings"]["prefix_tokens_used"] == 2
    assert LayerSummary.read(tmp_path / "block").settings.layout_used == "tokens"


def test_activations_record_their_reading(tiny: TinyStore, tmp_path: Path) -> None:
    acts = np.random.default_rng(0).random((tiny.n, 10, 3), dtype=np.float32)  # 1 + 3×3 tokens
    res = score_activations(tiny.path, acts, "t", settings(), out=tmp_path)
    assert res.summary.settings.layout_used == "tokens"
    assert res.summary.settings.prefix_tokens_used == 1 and res.summary.activation_shape == (3, 3)


def test_revision_goes_with_a_model_only(tiny: TinyStore, tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((tiny.n, 2, 2, 2), np.float32))
    args = ["dissect", str(tiny.path), "-o", str(tmp_path / "o"),
            "--activations", str(tmp_path / "a.npy"), "--revision", "main"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code != 0 and "--revision go with --model" in r.output
