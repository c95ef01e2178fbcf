"""Shared fixtures: paths to the bundled real data, and stores built once per session."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
DATA = Path(__file__).resolve().parent / "data"
ADE_ROOT = SAMPLES / "ade20k" / "ADE20K_2021_17_01"
ADE_STREET = ADE_ROOT / "images" / "ADE" / "training" / "urban" / "street"
ADE_IDS = ("ADE_train_00016869", "ADE_train_00016900")


def load_make_dtd() -> ModuleType:
    """The DTD-format sample generator (samples/make_dtd.py) as a module."""
    spec = importlib.util.spec_from_file_location("make_dtd", SAMPLES / "make_dtd.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def sample_store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample (samples/broden-sample.yaml) built once for the whole session."""
    from broden.build import build
    from broden.config import load_config

    out = tmp_path_factory.mktemp("sample") / "sample.zarr"
    build(load_config(SAMPLES / "broden-sample.yaml"), out, progress=False)
    return out


@pytest.fixture
def ade_copy(tmp_path: Path) -> Path:
    """A writable copy of the ADE20K 2021 sample release (without the instance masks)."""
    dst = tmp_path / "ADE20K_2021_17_01"
    shutil.copytree(ADE_ROOT, dst, ignore=shutil.ignore_patterns("instance_*"))
    return dst


@pytest.fixture
def dtd_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "dtd"
    shutil.copytree(SAMPLES / "dtd", dst)
    return dst
