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


def test_version_and_shell_completion() -> None:
    from broden.build.summary import package_version

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout == f"broden {package_version()}\n"
    r = runner.invoke(app, ["--help"])
    assert "--install-completion" in r.stdout and "--version" in r.stdout


def test_usage_errors_are_one_error_line_too(tmp_path: Path) -> None:
    """click's own checks (a value out of range, an unknown command, a missing value or
    argument) end like broden's: one line, exit 2, no boxed panel."""
    for args, want in (
        (["build", "--workers", "0"], "Invalid value for '--workers'"),
        (["nosuch"], "No such command 'nosuch'"),
        (["build", "--dask"], "Option '--dask' requires an argument"),
        (["concepts"], "missing STORE (or --diff OLD NEW)"),
        (["info"], "Missing argument 'store'"),
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], lines
        assert "╭" not in r.output and "Traceback" not in r.output
    r = runner.invoke(app, [])
    assert r.exit_code == 0 and "Usage: " in r.output and "COMMAND" in r.output  # the help


def test_help_keeps_brackets_that_are_not_markup() -> None:
    r = runner.invoke(app, ["build", "--help"], env={"COLUMNS": "300"})
    assert "needs broden[dask]" in r.stdout
    r = runner.invoke(app, ["dissect", "--help"], env={"COLUMNS": "300"})
    assert "cuda[:N]" in r.stdout


def test_tree_of_one_category(sample_store_path: Path) -> None:
    r = runner.invoke(app, ["concepts", str(sample_store_path), "--tree", "--category", "part"])
    assert r.exit_code == 0
    heads = [line.split(" (")[0] for line in r.stdout.splitlines() if not line.startswith(" ")]
    assert heads == ["part"]
    assert any("rim  part of: wheel (964 px)" in line for line in r.stdout.splitlines())


def test_info_names_an_unfinished_build_and_how_to_resume(tmp_path: Path) -> None:
    import json as json_

    from broden.build.staging import atomic_write_json, staging_path

    store = tmp_path / "s.zarr"
    staging = staging_path(store)
    (staging / "tasks").mkdir(parents=True)
    (staging / "written").mkdir()
    atomic_write_json(staging / "plan.json", {"fingerprint": "x", "tasks": 7})
    atomic_write_json(staging / "tasks" / "00000.json", {"task": 0})
    r = runner.invoke(app, ["info", str(store)])
    assert r.exit_code == 0, r.output
    assert "not written yet: a build is in progress or was interrupted" in r.stdout
    assert "1 of 7 tasks prepared" in r.stdout and "run the same `broden build`" in r.stdout
    info = json_.loads(runner.invoke(app, ["info", str(store), "--json"]).stdout)
    assert info["complete"] is False
    assert info["in_progress"]["tasks"] == 7 and info["in_progress"]["kind"] == "build"
    r = runner.invoke(app, ["info", str(tmp_path / "other.zarr")])
    assert r.exit_code == 2 and "no such store" in r.stderr


def test_bundled_configs_by_name(tmp_path: Path, monkeypatch) -> None:
    from broden.config import bundled_config_path, load_config, resolve_config

    assert resolve_config("sample") == bundled_config_path("sample")
    assert load_config(str(bundled_config_path("sample"))).image_size == 224  # a str works
    monkeypatch.delenv("BRODEN_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["build", "broden1", "--out", "b.zarr", "-q"])
    assert r.exit_code == 2 and "BRODEN_DATA" in r.stderr, r.output
    r = runner.invoke(app, ["build", "no-such.yaml", "-q"])
    assert r.exit_code == 2
    assert "config file no-such.yaml does not exist (bundled configs: broden1, sample)" in r.stderr
