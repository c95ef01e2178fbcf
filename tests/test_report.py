"""The HTML report (`broden report`, :func:`broden.dissect.report.write_report`): one offline page
that references only local files, escapes every name, shows per unit the images with the
largest per-image maxima (checked against activations computed here, independently) with
the unit's mask drawn from the re-run model or the recorded activation file, and fails
with a clear message on a folder that is not a results folder, a missing store or a
model that no longer loads."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from broden.cli import app
from broden.dissect.errors import DissectError
from broden.dissect.report import (
    BAR_ORDER,
    DIM,
    UNIT_OUTLINE,
    UnitRow,
    coverage,
    detector_counts,
    display_name,
    draw_masks,
    has_random_weights,
    read_layer,
    unit_masks,
    write_report,
)
from broden.dissect.settings import DissectSettings
from broden.dissect.synthetic import write_store
from tests.dissect_helpers import ref_upsample

EVIL = "<script>alert(1)</script>"
MODEL = "tests.test_report:tiny_model"
N, S, L = 14, 32, 16
IMAGENET = (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))


class Tiny(nn.Module):
    """Four units per layer: redness, green, blue, darkness; ``conv`` at 32×32, ``pool``
    at 8×8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.pool = nn.AvgPool2d(4)
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.tensor(
                    [[1.0, -0.5, -0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, -1.0, -1.0]]
                ).view(4, 3, 1, 1)
            )
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


def tiny_model() -> nn.Module:
    return Tiny()


@dataclass
class TinyRun:
    out: Path
    store: Path
    images: np.ndarray


def tiny_store(path: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    """Gray noise images with a red square labelled with a concept named like a script,
    gray-c on the rest, a scene label ``street-s`` on every other image."""
    rng = np.random.default_rng(seed)
    images = rng.integers(70, 150, size=(N, S, S, 3)).astype(np.uint8)
    obj = np.zeros((N, 1, L, L), np.uint16)
    color = np.full((N, 1, L, L), 2, np.uint16)
    for i in range(N):
        size = int(rng.integers(3, 8))
        y, x = rng.integers(0, L - size, size=2)
        obj[i, 0, y : y + size, x : x + size] = 1
        color[i, 0, y : y + size, x : x + size] = 0
        red = np.array([150 + 7 * i, 30, 30], np.uint8)
        images[i, 2 * y : 2 * (y + size), 2 * x : 2 * (x + size)] = red
    scene = np.where(np.arange(N)[:, None] % 2 == 0, 3, 0).astype(np.uint16)
    concepts = [(EVIL, "object"), ("gray-c", "color"), ("street-s", "scene")]
    write_store(path, images, {"object": obj, "color": color}, {"scene": scene}, concepts)
    return path, images


def tiny_run(tmp_path: Path) -> TinyRun:
    """The tiny store dissected at layers conv and pool of :class:`Tiny` (no report)."""
    from broden.dissect.pipeline import dissect

    store, images = tiny_store(tmp_path / "tiny.zarr")
    out = tmp_path / "out"
    dissect(
        store,
        MODEL,
        ["conv", "pool"],
        DissectSettings(quantile=0.02, workers=0, progress=False),
        out=out,
    )
    return TinyRun(out, store, images)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    r = tiny_run(tmp_path_factory.mktemp("report"))
    write_report(r.out, top_k=5)
    return r


# -- a DOM from html.parser -----------------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    text: str = ""


class Dom(HTMLParser):
    """Every start tag with its attributes, and the text of <script> and <style>."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.nodes: list[Node] = []
        self.text: list[str] = []
        self._raw: Node | None = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.nodes.append(node)
        if tag in ("script", "style"):
            self._raw = node

    def handle_endtag(self, tag: str) -> None:
        self._raw = None

    def handle_data(self, data: str) -> None:
        if self._raw is not None:
            self._raw.text += data
        else:
            self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.nodes
            if n.tag == tag and all(n.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())
        ]


def page(run: TinyRun) -> tuple[str, Dom]:
    html = (run.out / "report.html").read_text()
    return html, Dom(html)


def rows(dom: Dom) -> list[Node]:
    return [n for n in dom.nodes if n.tag == "tr" and "data-unit" in n.attrs]


# -- the page -------------------------------------------------------------------------------


def test_report_parses_and_references_only_local_files(run: TinyRun) -> None:
    html, dom = page(run)
    assert html.startswith("<!DOCTYPE html>")
    refs = [n.attrs[a] for n in dom.nodes for a in ("src", "href") if a in n.attrs]
    assert refs
    for ref in refs:
        assert not re.match(r"^([a-z][a-z0-9+.-]*:|//)", ref, re.I) or ref.startswith("data:"), ref
    assert not re.search(r"https?://|//[a-z0-9-]+\.[a-z]", html, re.I)
    assert not re.search(r"@import|url\(", html)
    # no link, iframe, object or external script of any kind
    assert not dom.find("link") and not dom.find("iframe") and not dom.find("object")
    assert [s.attrs for s in dom.find("script")] == [{}]
    # the charts only point inside themselves
    for svg in (run.out / "report_files").rglob("*.svg"):
        text = svg.read_text()
        for href in re.findall(r'href="([^"]*)"', text):
            assert href.startswith("#"), href


def test_every_unit_row_links_images_that_exist(run: TinyRun) -> None:
    _, dom = page(run)
    by_layer: dict[str, int] = {}
    for t in dom.find("table"):
        if "data-layer" in t.attrs:
            by_layer[t.attrs["data-layer"]] = 0
    assert set(by_layer) == {"conv", "pool"}
    all_rows = rows(dom)
    assert len(all_rows) == 8  # 4 units in each layer
    imgs = [n for n in dom.find("img") if n.attrs.get("class") in ("um", "cm")]
    assert len([i for i in imgs if i.attrs["class"] == "um"]) == 8
    for img in imgs:
        path = run.out / img.attrs["src"]
        assert path.is_file(), img.attrs["src"]
        with Image.open(path) as im:
            assert im.size == (int(img.attrs["width"]), int(img.attrs["height"]))
            assert im.size == (5 * 32 + 4 * 3, 32)  # 5 tiles of the 32-pixel images
    charts = dom.find("img", class_="bars")
    assert charts and all((run.out / c.attrs["src"]).is_file() for c in charts)


def test_concept_names_are_escaped(run: TinyRun) -> None:
    html, dom = page(run)
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    scripts = dom.find("script")
    assert len(scripts) == 1 and "alert" not in scripts[0].text
    labels = [r.attrs["data-label"] for r in rows(dom)]
    assert EVIL in labels  # the redness units detect it, and the name survives as text
    assert EVIL in "".join(dom.text)


def test_display_names_drop_the_broden_suffixes(run: TinyRun) -> None:
    assert display_name("street-s", "scene") == "street"
    assert display_name("gray-c", "color") == "gray"
    assert display_name("wheel-s", "object") == "wheel-s"
    assert display_name("-c", "color") == "-c"
    html, dom = page(run)
    gray = [r for r in rows(dom) if r.attrs["data-label"] == "gray-c"]
    assert gray, "the darkness units should be gray-c detectors"
    assert re.search(r'<td class="label" title="gray-c">gray</td>', html)


def _model_maxima(images: np.ndarray, layer: str) -> np.ndarray:
    """Per-image maxima (N, units) of a layer of :class:`Tiny`, computed here."""
    mean, std = IMAGENET
    x = (images.astype(np.float64) / 255.0 - mean) / std
    x = torch.from_numpy(x.transpose(0, 3, 1, 2)).float()
    m = Tiny()
    with torch.no_grad():
        maps = m.conv(x) if layer == "conv" else m(x)
    return maps.flatten(2).amax(2).numpy()


def _expected_top(maxima: np.ndarray, k: int) -> list[list[int]]:
    """Per unit the k images with the largest maxima (ties: lower index first)."""
    n = maxima.shape[0]
    return [list(np.lexsort((np.arange(n), -maxima[:, u]))[:k]) for u in range(maxima.shape[1])]


def test_top_images_are_those_with_the_largest_maxima(run: TinyRun) -> None:
    _, dom = page(run)
    table_rows = rows(dom)
    for layer, chunk in (("conv", table_rows[:4]), ("pool", table_rows[4:])):
        maxima = _model_maxima(run.images, layer)
        expect = _expected_top(maxima, 5)
        for r in chunk:
            shown = [int(v) for v in r.attrs["data-images"].split()]
            assert shown == expect[int(r.attrs["data-unit"])], (layer, r.attrs["data-unit"])


def test_unit_masks_are_the_upsampled_maps_above_the_threshold() -> None:
    rng = np.random.default_rng(1)
    maps = torch.from_numpy(rng.normal(size=(3, 2, 5, 7)).astype(np.float32))
    thr = np.array([0.5, 1.0, 9.0])  # the last is above every value: empty masks
    masks = unit_masks(maps, thr, 40).numpy()
    assert masks.shape == (3, 2, 40, 40) and not masks[2].any()
    for u in range(3):
        for j in range(2):
            ref = ref_upsample(maps[u, j].double().numpy(), 40)
            near = np.abs(ref - thr[u]) < 1e-5
            assert ((ref > thr[u]) == masks[u, j])[~near].all()


def test_masks_dim_the_image_outside_and_outline_the_border() -> None:
    image = np.full((1, 8, 8, 3), 200, np.uint8)
    m = np.zeros((1, 16, 16), bool)
    m[0, 4:12, 4:12] = True  # 2..5 on the 8-pixel tile
    cover = coverage(m, 8)
    assert cover.shape == (1, 8, 8) and cover[0, 2:6, 2:6].min() == 1.0 and cover.sum() == 16
    out = draw_masks(image, cover, UNIT_OUTLINE)[0]
    assert (out[0, 0] == round(200 * DIM)).all()  # outside: 20 %
    assert (out[2, 2:6] == UNIT_OUTLINE).all() and (out[2:6, 2] == UNIT_OUTLINE).all()
    assert (out[3:5, 3:5] == 200).all()  # inside, off the border: unchanged
    assert draw_masks(image, None, UNIT_OUTLINE) is image
    # a tile size that does not divide the image size (broden1_227): area averaging
    odd = coverage(np.ones((2, 227, 227), bool), 112)
    assert odd.shape == (2, 112, 112) and np.allclose(odd, 1.0)


def test_which_model_specs_have_random_weights() -> None:
    assert has_random_weights("dissect.zoo:resnet18", None)
    assert not has_random_weights("dissect.zoo:resnet18", "resnet18.pth")
    assert has_random_weights("torchvision:resnet50", None)
    assert not has_random_weights("torchvision:resnet50:IMAGENET1K_V2", None)
    assert not has_random_weights("mypkg.models:trained", None)
    assert not has_random_weights(None, None)


def _shrink(mask: np.ndarray, steps: int) -> np.ndarray:
    m = np.pad(mask, 1)
    for _ in range(steps):
        m[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m[1:-1, 1:-1]


def test_strips_show_the_unit_mask_of_the_rerun_model(run: TinyRun) -> None:
    """The drawn strip of a redness unit is bright where the mask computed here is on and
    dimmed to 20 % where it is off."""
    layer = read_layer(run.out / "pool")
    u = next(r.unit for r in layer.units if r.label == EVIL)
    top = int(layer.top_indices[u, 0])
    mean, std = IMAGENET
    x = (run.images[top : top + 1].astype(np.float64) / 255.0 - mean) / std
    with torch.no_grad():
        a = Tiny()(torch.from_numpy(x.transpose(0, 3, 1, 2)).float())[0, u].double().numpy()
    mask = ref_upsample(a, S) > layer.thresholds[u]
    assert 0 < mask.sum() < S * S
    strip_path = run.out / "report_files" / "pool" / f"unit-{u:04d}.jpg"
    tile = np.asarray(Image.open(strip_path).convert("L"), np.float64)[:, :S]
    gray = np.asarray(Image.fromarray(run.images[top]).convert("L"), np.float64)
    inner, outer = _shrink(mask, 3), _shrink(~mask, 3)  # away from the outline and ringing
    assert inner.any() and outer.any()
    assert abs(tile[inner].mean() - gray[inner].mean()) < 12
    assert abs(tile[outer].mean() - DIM * gray[outer].mean()) < 8


def test_bar_chart_groups_detectors_in_the_original_category_order(run: TinyRun) -> None:
    layer = read_layer(run.out / "pool")
    units = [
        ("red-c", "color", 0.2),
        ("grass", "texture", 0.3),
        ("wheel", "part", 0.05),
        ("street-s", "scene", 0.1),
        ("car", "object", 0.5),
        ("tree", "object", 0.06),
        ("tree", "object", 0.07),
        ("car", "object", 0.01),  # below the IoU threshold: not counted
        ("", "", 0.0),
    ]
    layer.units = [UnitRow(u, lab, cat, iou) for u, (lab, cat, iou) in enumerate(units)]
    assert detector_counts(layer, BAR_ORDER) == [
        ("tree", "object", 2),
        ("car", "object", 1),
        ("street-s", "scene", 1),
        ("wheel", "part", 1),
        ("grass", "texture", 1),
        ("red-c", "color", 1),
    ]
    chart = run.out / "report_files" / "pool" / "detectors.svg"
    assert chart.read_text().lstrip().startswith("<?xml")


def test_headline_and_category_counts(run: TinyRun) -> None:
    html, _ = page(run)
    layer = read_layer(run.out / "pool")
    t = layer.iou_threshold
    text = re.sub(r"<[^>]+>|\s+", " ", html)
    text = re.sub(r" +", " ", text)
    expected = (
        f"{layer.detectors} of 4 units are detectors of {layer.unique['top_label']} unique "
        f"concepts (IoU &gt; {t:g})"
    )
    assert expected in text


# -- activations from a file, transforms, and what cannot be drawn ---------------------------


def test_precomputed_activations_draw_masks_until_the_file_is_gone(tmp_path: Path) -> None:
    from broden.dissect.pipeline import score_activations

    store, _ = tiny_store(tmp_path / "tiny.zarr")
    acts = np.random.default_rng(3).normal(size=(N, 3, 4, 4)).astype(np.float32)
    path = tmp_path / "conv5.npy"
    np.save(path, acts)
    out = tmp_path / "out"
    score_activations(store, path, None, DissectSettings(quantile=0.05, progress=False), out=out)
    html = write_report(out, top_k=4).read_text()
    assert "unit masks not drawn" not in html
    expect = _expected_top(acts.reshape(N, 3, -1).max(axis=2), 4)
    shown = [[int(v) for v in r.attrs["data-images"].split()] for r in rows(Dom(html))]
    assert shown == expect
    path.unlink()
    html = write_report(out, top_k=4).read_text()
    assert "unit masks not drawn" not in html  # drawn from topmaps.npy, not the file
    (out / "conv5" / "topmaps.npy").unlink()  # as in results of an earlier broden
    html = write_report(out, top_k=4).read_text()
    assert "unit masks not drawn: the activation file" in html
    assert all((out / n.attrs["src"]).is_file() for n in Dom(html).find("img", class_="um"))


def test_a_transformed_layer_needs_its_transform(tmp_path: Path) -> None:
    from broden.dissect.pipeline import dissect

    store, _ = tiny_store(tmp_path / "tiny.zarr")
    out = tmp_path / "out"

    def negate(m: torch.Tensor) -> torch.Tensor:
        return -m

    dissect(
        store,
        MODEL,
        ["pool"],
        DissectSettings(quantile=0.05, workers=0, progress=False),
        out=out,
        unit_transform=negate,
        transform_key="negate",
    )
    html = write_report(out, top_k=3).read_text()  # topmaps.npy holds the transformed maps
    assert "not drawn" not in html and "differ from the recorded" not in html
    (out / "pool" / "topmaps.npy").unlink()  # a re-run of the model needs the transform
    html = write_report(out, top_k=3, model=MODEL).read_text()
    assert "unit transform" in html and "not drawn" in html
    html = write_report(out, top_k=3, transforms={"pool": negate}, model=MODEL).read_text()
    assert "not drawn" not in html and "differ from the recorded" not in html


def test_top_k_beyond_the_recorded_images_is_capped(run: TinyRun, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(run.out, out)
    html = write_report(out, top_k=40, masks=False).read_text()
    assert f"{N} top images per unit were recorded; showing {N}, not 40" in html
    assert "unit masks not drawn (masks turned off)" in html


def test_not_a_results_folder(tmp_path: Path) -> None:
    with pytest.raises(DissectError, match="not a dissection results folder"):
        write_report(tmp_path)
    with pytest.raises(DissectError, match="no such folder"):
        write_report(tmp_path / "nope")
    (tmp_path / "layer").mkdir()
    (tmp_path / "layer" / "summary.json").write_text("{}")
    with pytest.raises(DissectError, match="cannot read summary.json"):
        write_report(tmp_path)


def test_missing_store_and_model_that_no_longer_loads(run: TinyRun, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(run.out, out)
    with pytest.raises(DissectError, match="does not exist; pass the store"):
        write_report(out, store=tmp_path / "gone.zarr")
    for layer in ("conv", "pool"):
        f = out / layer / "summary.json"
        s: dict[str, Any] = json.loads(f.read_text())
        s["model"]["spec"] = "tests.no_such_module:model"
        f.write_text(json.dumps(s))
    assert "not drawn" not in write_report(out, store=run.store).read_text()  # topmaps.npy
    for layer in ("conv", "pool"):
        (out / layer / "topmaps.npy").unlink()
    with pytest.raises(DissectError, match="does not load.*--no-masks"):
        write_report(out, store=run.store, model="tests.no_such_module:model")
    assert write_report(out, store=run.store, masks=False).is_file()


def test_a_different_store_is_refused(run: TinyRun, tmp_path: Path) -> None:
    other, _ = tiny_store(tmp_path / "other.zarr", seed=5)
    with pytest.raises(DissectError, match="is not the one dissected"):
        write_report(run.out, store=other)


# -- the command line -----------------------------------------------------------------------

runner = CliRunner()


def test_report_command(run: TinyRun, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(run.out, out)
    (out / "report.html").unlink()
    r = runner.invoke(app, ["report", str(out), "--top-k", "3", "--store", str(run.store)])
    assert r.exit_code == 0, r.output
    assert str(out / "report.html") in r.output
    rows_ = rows(Dom((out / "report.html").read_text()))
    assert all(len(x.attrs["data-images"].split()) == 3 for x in rows_)
    r = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "no such folder" in r.output


def test_dissect_writes_the_report_unless_told_not_to(tmp_path: Path) -> None:
    store, _ = tiny_store(tmp_path / "tiny.zarr")
    args = ["dissect", str(store), "--model", MODEL, "--layer", "pool", "--quantile", "0.05"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "-q", "--workers", "0",
                            "--top-k", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"report: {tmp_path / 'a' / 'report.html'}" in r.output
    rows_ = rows(Dom((tmp_path / "a" / "report.html").read_text()))
    assert all(len(x.attrs["data-images"].split()) == 2 for x in rows_)
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "-q", "--workers", "0",
                            "--no-report"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "b" / "report.html").exists() and "report:" not in r.output


def test_dissect_says_when_the_weights_are_random(tmp_path: Path) -> None:
    store, _ = tiny_store(tmp_path / "tiny.zarr")
    r = runner.invoke(
        app,
        ["dissect", str(store), "--model", "dissect.zoo:resnet18", "--layer", "layer1",
         "--out", str(tmp_path / "o"), "-q", "--workers", "0", "--no-report"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "random weights" in r.output
