"""The README runs as written: every shell, console and Python block of README.md is run,
in order, in one working folder, as a reader following it would.

What a block needs that a reader downloads (the five Broden sources, a legacy release, a
COCO export, a trained checkpoint) is made here in the same formats: ``$BRODEN_DATA`` is the
five-source mini-Broden of tests/test_broden1.py, the legacy release is
tests/test_legacy.py's, the COCO export tests/test_extend.py's, checkpoints are state dicts
of the right models. A block may be preceded by a marker, an HTML comment that GitHub does
not show::

    <!-- readme-test: {"skip": "why"} -->            not run (the reason is required)
    <!-- readme-test: {"file": "name.yaml"} -->       written to a file for later blocks
    <!-- readme-test: {"config": true} -->           parsed as a build config
    <!-- readme-test: {"pytest": true} -->           run as a test module with pytest
    <!-- readme-test: {"sub": {"old": "new"}} -->    run with these replacements; ``{name}``
                                                    in a replacement is a path made here

Blocks without a language (folder trees) and ``yaml``/``toml`` blocks without a marker are
prose. Torchvision models (not installable beside the CPU torch here) are replaced by the
built-in ``dissect.zoo`` model of the same architecture where a block names one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import ADE_STREET, REPO

README = REPO / "README.md"
MARKER = re.compile(r"^<!-- readme-test: (\{.*\}) -->$")
RUN = ("sh", "console", "python")
TIMEOUT = 600


@dataclass
class Block:
    line: int  # of the opening fence
    lang: str
    text: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.lang} block)"


def blocks(path: Path = README) -> list[Block]:
    """The fenced blocks of ``path``, with their markers."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        marker = MARKER.match(lines[i - 1]) if i else None
        options = json.loads(marker.group(1)) if marker else {}
        found.append(Block(i + 1, m.group(1), "\n".join(lines[i + 1 : j]) + "\n", options))
        i = j + 1
    return found


def to_run(b: Block) -> bool:
    if "skip" in b.options:
        return False
    return b.lang in RUN or any(k in b.options for k in ("file", "config", "pytest"))


def test_every_block_is_run_or_skipped_for_a_reason() -> None:
    every = blocks()
    assert len(every) > 20
    for b in every:
        unknown = set(b.options) - {"skip", "file", "config", "pytest", "sub"}
        assert not unknown, f"{b.where}: unknown marker keys {unknown}"
        if "skip" in b.options:
            assert len(b.options["skip"]) > 10, f"{b.where}: say why it is not run"
        assert b.lang in (*RUN, "", "yaml", "toml"), f"{b.where}: what runs a {b.lang} block?"
    ran = [b for b in every if to_run(b)]
    assert sum(b.lang == "python" for b in ran) >= 4 and sum(b.lang == "sh" for b in ran) >= 8


# -- the working folder ----------------------------------------------------------------------


MYPKG = '''"""A user's model package, as the README's `--model mypkg.models:build` names it."""
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            [nn.Conv2d(3, 8, 3, stride=2, padding=1)]
            + [nn.Conv2d(8, 8, 3, padding=1) for _ in range(11)]
        )

    def forward(self, x):
        for b in self.blocks:
            x = b(x).relu()
        return x


def build():
    return Net()
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reader's working folder and the downloads the README's blocks name."""
    from broden.dissect.zoo import resnet18
    from tests.test_adapter_folder import make_folder
    from tests.test_broden1 import make_sources
    from tests.test_extend import IMAGES, instances_json
    from tests.test_legacy import make_release

    base = tmp_path_factory.mktemp("readme")
    cwd = base / "work"
    cwd.mkdir()
    (base / "my_export").mkdir()
    paths = {
        "cwd": cwd,
        "broden_data": make_sources(base / "broden-sources"),
        "legacy": base / "broden1_224",
        "coco_images": IMAGES,
        "coco_json": instances_json(base / "my_export" / "annotations.json"),
        "hand_labelled": make_folder(base / "hand_labelled"),
    }
    make_release(paths["legacy"])
    shutil.copy(ADE_STREET / "ADE_train_00016869.jpg", cwd / "photo.jpg")
    (cwd / "store.zarr").symlink_to("broden-sample.zarr")  # built by the first block
    weights = resnet18().state_dict()
    for name in ("resnet18.pth", "r18.pth"):
        torch.save(weights, cwd / name)
    (cwd / "mypkg").mkdir()
    (cwd / "mypkg" / "__init__.py").write_text("")
    (cwd / "mypkg" / "models.py").write_text(MYPKG)
    sys.path.insert(0, str(cwd))
    try:
        from mypkg.models import build  # type: ignore[import-not-found]

        torch.save(build().state_dict(), cwd / "ckpt.pth")
    finally:
        sys.path.remove(str(cwd))
        for m in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
            del sys.modules[m]
    rng = np.random.default_rng(0)
    np.save(cwd / "conv5.npy", np.maximum(rng.normal(size=(26, 8, 7, 7)), 0).astype(np.float32))
    return paths


def environment(world: dict[str, Path]) -> dict[str, str]:
    """The reader's shell: this venv's broden and python first on PATH, BRODEN_DATA set,
    the working folder importable (their own modules and plugins live there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BRODEN"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["BRODEN_DATA"] = str(world["broden_data"])
    env["PYTHONPATH"] = str(world["cwd"])
    env["COLUMNS"] = "120"
    return env


def prepared(b: Block, world: dict[str, Path]) -> str:
    text = b.text
    for old, new in b.options.get("sub", {}).items():
        assert old in text, f"{b.where}: the marker replaces {old!r}, which is not in the block"
        text = text.replace(old, new.format(**{k: str(v) for k, v in world.items()}))
    return text


def run_block(n: int, b: Block, world: dict[str, Path]) -> None:
    cwd, env, text = world["cwd"], environment(world), prepared(b, world)
    if "file" in b.options:
        (cwd / b.options["file"]).write_text(text)
        return
    if b.options.get("config"):
        import yaml

        from broden.config import parse_config

        parse_config(yaml.safe_load(text), base=cwd, origin=b.where)
        return
    if b.options.get("pytest"):
        (cwd / f"test_readme_{n}.py").write_text(text)
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"test_readme_{n}.py",
        ]
    elif b.lang == "python":
        (cwd / f"readme_{n}.py").write_text(text)
        cmd = [sys.executable, f"readme_{n}.py"]
    else:
        if b.lang == "console":
            text = "\n".join(ln[2:] for ln in text.splitlines() if ln.startswith("$ ")) + "\n"
        cmd = ["bash", "-euo", "pipefail", "-c", text]
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, (
        f"{b.where} failed (exit {r.returncode}):\n{text}\n--- stdout ---\n{r.stdout[-3000:]}"
        f"\n--- stderr ---\n{r.stderr[-3000:]}"
    )


@pytest.mark.slow
def test_the_readme_runs_as_written(world: dict[str, Path]) -> None:
    ran = []
    for n, b in enumerate(blocks()):
        if to_run(b):
            run_block(n, b, world)
            ran.append(b.line)
    cwd = world["cwd"]
    # what the blocks promise is there
    for made in (
        "broden-sample.zarr",
        "broden1_224.zarr",
        "broden1_224.zarr.orig",
        "legacy.zarr",
        "exported/index.csv",
        "mine.csv",
        "tex.yaml",
        "results/layer4/summary.json",
        "results/blocks.11/summary.json",
        "results/conv5/summary.json",
        "results/report.html",
        "cmp/comparison.csv",
        "results/rotated",
        "overlay.png",
    ):
        assert (cwd / made).exists(), f"after the README's blocks, {made} is missing"
    assert len(ran) >= 15
