"""``broden layers``: every module of a CNN and of a ViT-like model with its output shape
and how the dissection reads it, checked against what ``broden dissect`` then does."""

from __future__ import annotations

import json

import torch
from torch import nn
from typer.testing import CliRunner

from broden.cli import app
from broden.dissect.layers import list_layers
from tests.test_dissect_models import SeqFirstNet

runner = CliRunner()


class TinyViT(nn.Module):
    """Patches of 8 at 32 px (a 4×4 grid), a class token and 4 registers (21 tokens), two
    blocks with an MLP of 4× width, and a pooled head."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, 8, 8)
        self.prefix = nn.Parameter(torch.zeros(1, 5, d))
        self.blocks = nn.Sequential(*[Block(d) for _ in range(2)])
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.prefix.expand(len(t), -1, -1), t], 1)
        return self.head(self.blocks(t)[:, 0])


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.fc2(self.act(self.fc1(t)))


def test_a_cnn_lists_its_stages_with_their_grids() -> None:
    infos = {i.name: i for i in list_layers("dissect.zoo:resnet18")}
    assert list(infos)[:2] == ["conv1", "bn1"]  # named_modules order
    for name, units, grid in (("layer1", 64, 56), ("layer3", 256, 14), ("layer4", 512, 7)):
        i = infos[name]
        assert (i.shape, i.units, i.grid, i.layout) == (
            (2, units, grid, grid),
            units,
            (grid, grid),
            "nchw",
        )
    assert infos["layer4"].reading == "512 units × 7×7 (nchw)"
    assert "no localisation" in infos["avgpool"].reading
    assert infos["layer3"].kind == "Sequential" and infos["layer3.0.conv1"].kind == "Conv2d"
    at_112 = {i.name: i for i in list_layers("dissect.zoo:resnet18", input_size=112)}
    assert at_112["layer4"].grid == (4, 4)


def test_a_vit_lists_tokens_with_their_prefix_and_mlp_neurons() -> None:
    torch.manual_seed(0)
    infos = {i.name: i for i in list_layers(TinyViT().eval(), input_size=32, normalize="none")}
    block = infos["blocks.1"]
    assert block.shape == (2, 21, 6) and block.layout == "tokens"
    assert (block.units, block.grid) == (6, (4, 4))
    assert block.reading == "6 units × 4×4 (tokens, 5 prefix tokens dropped)"
    act = infos["blocks.0.act"]  # MLP hidden neurons, B×T×4D
    assert (act.units, act.grid, act.prefix_tokens) == (24, (4, 4), 5)
    assert infos["patch_embed"].layout == "nchw" and infos["patch_embed"].grid == (4, 4)
    assert infos["head"].grid == (1, 1)
    forced = {i.name: i for i in list_layers(TinyViT().eval(), input_size=32, prefix_tokens=1)}
    assert "not a square grid" in (forced["blocks.1"].problem or "")


def test_a_sequence_first_layer_is_marked() -> None:
    infos = {i.name: i for i in list_layers(SeqFirstNet().eval(), input_size=32)}
    tokens = infos["tokens"]
    assert tokens.shape == (16, 2, 8) and not tokens.batch_first
    assert "first axis is not the batch" in tokens.reading


def test_the_command_prints_a_table_and_json() -> None:
    r = runner.invoke(app, ["layers", "dissect.zoo:resnet18", "--input-size", "64"])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("layer4 "))
    assert line.split()[:3] == ["layer4", "Sequential", "B×512×2×2"]
    assert line.endswith("512 units × 2×2 (nchw)")
    r = runner.invoke(app, ["layers", "dissect.zoo:resnet18", "--json"])
    rows = {d["name"]: d for d in json.loads(r.output)}
    assert rows["layer4"]["units"] == 512 and rows["layer4"]["grid"] == [7, 7]
    bad = runner.invoke(app, ["layers", "no.such.module:net"])
    assert bad.exit_code == 2 and bad.output.startswith("error: ")
