"""End to end: the built-in ResNet-18 on the bundled sample store (two layers in one
run), the files written, the results cache, and the unit-transform hook."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from broden.dissect import DissectError, dissect, score_activations
from broden.dissect.hooks import LayerCapture
from broden.dissect.models import load_model, parse_normalize, preprocess
from broden.dissect.settings import DissectSettings as S
from broden.dissect.zoo import resnet18
from broden.store import open_store

LAYERS = ["layer3", "layer4"]
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def read_rows(path: Path, header: bool = True) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f) if header else csv.reader(f))


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    from broden.build import build
    from broden.config import load_config

    out = tmp_path_factory.mktemp("dissect-sample") / "sample.zarr"
    build(load_config(SAMPLES / "broden-sample.yaml"), out, progress=False)
    return out


@pytest.fixture(scope="module")
def activations(store_path) -> dict[str, np.ndarray]:
    """The sample store's layer3/layer4 activations, computed here with plain hooks and
    the normalisation written out."""
    store = open_store(store_path)
    images = torch.from_numpy(store.read_block(0, len(store)).images)
    x = images.permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    model = resnet18().eval()
    got: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(model, la).register_forward_hook(lambda m, i, o, la=la: got.__setitem__(la, o))
        for la in LAYERS
    ]
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return {la: got[la].double().numpy() for la in LAYERS}


@pytest.fixture(scope="module")
def run(store_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("dissect-run")
    res = dissect(
        store_path,
        "dissect.zoo:resnet18",
        LAYERS,
        S(workers=0, top_k=5, legacy_csv=True, progress=False),
        out=out,
    )
    return out, res


def test_two_layers_in_one_run_write_every_file(run):
    out, res = run
    assert list(res) == LAYERS
    for la, units, hw in (("layer3", 256, [14, 14]), ("layer4", 512, [7, 7])):
        d = out / la
        for f in (
            "units.csv",
            "concepts.csv",
            "iou.npy",
            "counts.npz",
            "thresholds.npy",
            "topk.npz",
            "summary.json",
            "tally.csv",
        ):
            assert (d / f).is_file(), f
        summary = json.loads((d / "summary.json").read_text())
        assert summary["units"] == units and summary["activation_shape"] == hw
        assert summary["settings"]["quantile_method"] == "exact"
        assert summary["settings"]["unit_area"] == "original"
        assert np.load(d / "iou.npy").shape == (units, 54)
        assert res[la].units == units


def test_thresholds_are_the_exact_quantiles_of_the_activations(run, activations):
    _, res = run
    for la in LAYERS:
        a = activations[la]
        want = np.quantile(a.transpose(1, 0, 2, 3).reshape(a.shape[1], -1), 0.995, axis=1)
        np.testing.assert_allclose(res[la].thresholds, want, rtol=1e-6, atol=1e-6)


def test_top_images_are_ranked_by_per_image_maximum(run, activations):
    out, _ = run
    with np.load(out / "layer4" / "topk.npz") as z:
        idx, val = z["indices"], z["values"]
    assert idx.shape == (512, 26)  # k = max(50, top_k), capped at the store's 26 images
    per_image = activations["layer4"].max(axis=(2, 3))  # (N, U)
    np.testing.assert_allclose(val, np.take_along_axis(per_image.T, idx, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(np.sort(idx, axis=1), np.tile(np.arange(26), (512, 1)))
    assert (np.diff(val, axis=1) <= 0).all()


def test_files_agree_with_the_counts(run, store_path):
    out, res = run
    d = out / "layer3"
    with np.load(d / "counts.npz") as z:
        inter, area = z["intersection"], z["concept_area"]
        unit_area = z["unit_area_original"]
        cats = list(z["categories"])
    rows = read_rows(d / "concepts.csv")
    store = open_store(store_path)
    assert [int(r["id"]) for r in rows] == [c.id for c in store.concepts]
    assert [r["category"] for r in rows] == [c.category for c in store.concepts]
    cat_of = np.array([cats.index(r["category"]) for r in rows])
    denom = unit_area[:, cat_of] + area[None] - inter
    want = np.where(denom > 0, inter / np.maximum(denom, 1), 0.0)
    np.testing.assert_allclose(np.load(d / "iou.npy"), want, rtol=0, atol=1e-12)
    units = read_rows(d / "units.csv")
    assert len(units) == 256 and list(units[0])[:4] == ["unit", "label", "category", "iou"]
    assert list(units[0])[4:6] == ["color_label", "color_iou"]
    best = want.argmax(axis=1)
    for u in (0, 17, 255):
        assert units[u]["unit"] == str(u)
        if want[u].max() > 0:
            assert units[u]["label"] == rows[best[u]]["name"]
            assert float(units[u]["iou"]) == pytest.approx(want[u].max(), abs=1e-6)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["detectors"] == int((want.max(axis=1) > 0.04).sum())
    assert summary["store"]["fingerprint"] == store.fingerprint()
    legacy = read_rows(d / "tally.csv", header=False)
    assert legacy[0][:4] == ["unit", "category", "label", "score"]
    assert legacy[0][4:9] == [
        "color-label",
        "color-truth",
        "color-activation",
        "color-intersect",
        "color-iou",
    ]
    scores = [float(r[3]) for r in legacy[1:]]
    assert scores == sorted(scores, reverse=True)
    assert sorted(int(r[0]) for r in legacy[1:]) == list(range(1, 257))


def test_model_and_activation_paths_give_identical_counts(run, store_path, tmp_path):
    _, res = run
    store = open_store(store_path)
    model = load_model("dissect.zoo:resnet18").module
    with torch.inference_mode(), LayerCapture(model, ["layer4"]) as cap:
        x = preprocess(
            torch.from_numpy(store.read_block(0, 26).images), parse_normalize("imagenet"), 224
        )
        acts = cap.run(x)["layer4"].contiguous().numpy()
    np.save(tmp_path / "layer4.npy", acts)
    r = score_activations(
        store_path, tmp_path / "layer4.npy", None, S(top_k=5, progress=False), out=tmp_path / "out"
    )
    assert r.layer == "layer4"
    np.testing.assert_array_equal(r.thresholds, res["layer4"].thresholds)
    for k, v in res["layer4"].counts.items():
        np.testing.assert_array_equal(r.counts[k], v)


def test_one_and_two_forward_passes_agree(store_path, run, tmp_path):
    _, res = run
    two = dissect(
        store_path,
        "dissect.zoo:resnet18",
        ["layer4"],
        S(workers=0, cache_activations="no", top_k=5, progress=False),
        out=tmp_path,
    )["layer4"]
    assert two.summary.settings.passes == 2
    assert res["layer4"].summary.settings.passes == 1
    for k, v in res["layer4"].counts.items():
        np.testing.assert_array_equal(two.counts[k], v)


def test_cache_reuses_only_what_the_same_key_made(store_path, tmp_path):
    s, model = S(workers=0, progress=False), "dissect.zoo:resnet18"
    first = dissect(store_path, model, ["layer3"], s, out=tmp_path)["layer3"]
    assert not first.reused
    stamp = (tmp_path / "layer3" / "counts.npz").stat().st_mtime_ns
    # another layer into the same folder: computed, not NetDissect-Lite's stale reuse
    other = dissect(store_path, model, ["layer4"], s, out=tmp_path)["layer4"]
    assert not other.reused and other.units == 512
    again = dissect(store_path, model, ["layer3", "layer4"], s, out=tmp_path)
    assert again["layer3"].reused and again["layer4"].reused
    assert any("reused" in n for n in again["layer3"].notes)
    assert (tmp_path / "layer3" / "counts.npz").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again["layer3"].iou, first.iou)
    # scoring settings do not change counts: reused and re-scored
    loose = dissect(store_path, model, ["layer3"], s.replace(iou_threshold=0.001), out=tmp_path)
    loose = loose["layer3"]
    assert loose.reused and loose.summary.settings.iou_threshold == 0.001
    assert loose.detectors == int((first.iou.max(axis=1) > 0.001).sum())
    # a setting that changes counts recomputes
    q = dissect(store_path, model, ["layer3"], s.replace(quantile=0.01), out=tmp_path)["layer3"]
    assert not q.reused
    assert (q.thresholds < first.thresholds).mean() > 0.9
    w = dissect(
        store_path, model, ["layer3"], s.replace(quantile=0.01, normalize="none"), out=tmp_path
    )["layer3"]
    assert not w.reused


def test_unit_transform_is_applied_before_thresholds(store_path, tmp_path, activations):
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(0))

    def flip(maps: torch.Tensor) -> torch.Tensor:
        return -maps[:, perm]

    r = dissect(
        store_path,
        "dissect.zoo:resnet18",
        ["layer3"],
        S(workers=0, progress=False),
        out=tmp_path,
        unit_transform=flip,
        transform_key="flip-perm0",
    )["layer3"]
    a = -activations["layer3"][:, perm.numpy()]
    want = np.quantile(a.transpose(1, 0, 2, 3).reshape(256, -1), 0.995, axis=1)
    np.testing.assert_allclose(r.thresholds, want, rtol=1e-6, atol=1e-6)
    assert r.summary.settings.transform == "flip-perm0"
    plain = dissect(
        store_path, "dissect.zoo:resnet18", ["layer3"], S(workers=0, progress=False), out=tmp_path
    )["layer3"]
    assert not plain.reused  # another cache key
    with pytest.raises(DissectError, match="transform_key"):
        dissect(
            store_path,
            "dissect.zoo:resnet18",
            ["layer3"],
            S(workers=0, progress=False),
            out=tmp_path,
            unit_transform=flip,
        )


def test_given_thresholds_take_one_pass_and_are_used(store_path, run, tmp_path):
    out, res = run
    r = dissect(
        store_path,
        "dissect.zoo:resnet18",
        ["layer3", "layer4"],
        S(workers=0, top_k=5, progress=False),
        out=tmp_path,
        thresholds=out,
    )
    for la in LAYERS:
        np.testing.assert_array_equal(r[la].thresholds, res[la].thresholds)
        np.testing.assert_array_equal(r[la].counts["intersection"], res[la].counts["intersection"])
        assert r[la].summary.settings.thresholds == "given"
