"""The command line: --json contracts, exit statuses, readable errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from broden.cli import app

runner = CliRunner()


def test_info_json_contract(sample_store_path: Path) -> None:
    result = runner.invoke(app, ["info", str(sample_store_path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["images"] == 26 and info["image_size"] == 224 and info["label_size"] == 112
    assert info["categories"] == ["color", "texture", "part", "object", "scene"]
    assert info["complete"] is True
    assert [s["name"] for s in info["sources"]] == ["ade20k", "dtd"]
    assert info["sources"][0]["version"] == "ADE20K_2021_17_01"
    assert info["concepts"] == {"color": 11, "texture": 7, "part": 14, "object": 21, "scene": 1}


def test_concepts_json_contract(sample_store_path: Path) -> None:
    result = runner.invoke(app, ["concepts", str(sample_store_path), "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert len(records) == 54 and [r["id"] for r in records] == list(range(1, 55))
    keys = {"id", "name", "category", "categories", "frequency", "coverage", "part_of"}
    assert all(keys <= set(r) for r in records)
    by_name = {r["name"]: r for r in records}
    wheel = by_name["wheel"]
    assert wheel["category"] == "part"
    assert wheel["part_of"] == [{"id": by_name["car"]["id"], "pixels": 2292}]
    texture = runner.invoke(
        app, ["concepts", str(sample_store_path), "--category", "texture", "--json"]
    )
    assert {r["name"] for r in json.loads(texture.stdout)} == {
        "banded", "grid", "chequered", "dotted", "striped", "zigzagged", "polka-dotted",
    }  # fmt: skip


def test_concepts_tree_puts_parts_under_their_objects(sample_store_path: Path) -> None:
    result = runner.invoke(app, ["concepts", str(sample_store_path), "--tree"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    heads = [line.split(" (")[0] for line in lines if not line.startswith(" ")]
    assert heads == ["color", "texture", "part", "object", "scene"]
    car = next(i for i, line in enumerate(lines) if line.strip().endswith(" car"))
    assert lines[car + 1].strip().startswith("├─ windshield (43,809 px)")
    assert any("rim  part of: wheel (964 px)" in line for line in lines)


def test_validate_exit_status(sample_store_path: Path, tmp_path: Path) -> None:
    ok = runner.invoke(app, ["validate", str(sample_store_path)])
    assert ok.exit_code == 0 and "valid" in ok.stdout
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(sample_store_path, copy)
    for f in (copy / "images" / "c").rglob("*"):
        if f.is_file():
            f.unlink()
    bad = runner.invoke(app, ["validate", str(copy)])
    assert bad.exit_code == 1
    assert "images shard 0 (images 0-25): content differs" in bad.stderr


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["info", str(tmp_path / "nope.zarr")])
    assert missing.exit_code == 2
    assert missing.stderr.strip() == f"error: {tmp_path / 'nope.zarr'}: no such store"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sources:\n  - adapter: dtd\n    root: /no/such/dtd\n")
    result = runner.invoke(app, ["build", str(cfg), "--out", str(tmp_path / "o.zarr"), "-q"])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: source 'dtd': Describable Textures Dataset (DTD): folder"
    )
    assert "Traceback" not in result.output


def test_adapters_lists_the_builtins() -> None:
    result = runner.invoke(app, ["adapters"])
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"ade20k", "dtd"} <= set(names)
