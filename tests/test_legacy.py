"""Legacy Broden format: the broden_legacy adapter (release → store) and export_legacy
(store → release layout).

A small release is generated here in the exact layout of broden1_224 (joinseg.py's
files: index.csv rows sorted by the md5 split hash, multi-layer ADE part cells
``x_part_1.png;x_part_2.png``, single Pascal ``x_part.png`` cells, multi-label texture
cells, the "0" scene quirk, empty cells, a label number above 255, R + 256·G PNGs at half
the image size, label/category/c_* CSVs consistent with the data), at S = 32.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from broden.adapters import Adapter, SourceError, get_adapter_class
from broden.adapters.broden_legacy import BRODEN1_KINDS, BrodenLegacy
from broden.adapters.testing import AdapterContract
from broden.build import BuildError, build
from broden.config import ConfigError, parse_config
from broden.legacy import ExportError, _Namer, export_legacy, py2_float_str
from broden.store import open_store

S, L = 32, 16
CATEGORIES = ["color", "object", "part", "material", "scene", "texture"]  # by first number
COLORS = ["black-c", "white-c", "red-c", "green-c"]  # 1..4
NAMED = {  # number: (name, synonyms)
    5: ("wall", ""),
    6: ("person", "individual;someone"),
    7: ("leg", ""),
    8: ("head", ""),
    9: ("wheel", ""),
    10: ("wood", ""),
    11: ("glass", ""),
    12: ("street-s", ""),
    13: ("kitchen-s", ""),
    14: ("striped", ""),
    15: ("dotted", ""),
    16: ("banded", ""),
}
FILLERS = range(17, 267)  # scenes in no image, to push a label number above 255
CAR = 267  # R = 11, G = 1


# -- the synthetic release -----------------------------------------------------------------


def bands(spec: list[tuple[int, int]]) -> np.ndarray:
    """An L×L map of horizontal bands: (label, rows) in order, the rest 0."""
    out = np.zeros((L, L), np.uint16)
    row = 0
    for label, rows in spec:
        out[row : row + rows] = label
        row += rows
    return out


def hashed_float(s: str) -> float:
    (number,) = struct.unpack(">Q", hashlib.md5(s.encode()).digest()[:8])
    return number / 2.0**64


def py2_str(x: float) -> str:
    """Python 2's str(float), written independently of broden.legacy."""
    s = f"{x:.12g}"
    return s if any(ch in s for ch in ".en") else s + ".0"


def write_csv(path: Path, rows: list[list[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@dataclass
class Img:
    path: str  # under images/
    pixel: dict[str, list[np.ndarray]] = field(default_factory=dict)  # category -> layers
    scalar: dict[str, list[int]] = field(default_factory=dict)  # category -> numbers ("0" kept)
    layered: set[str] = field(default_factory=set)  # categories written as _<cat>_<k>.png


def release_images(rng: np.random.Generator) -> list[Img]:
    def color() -> list[np.ndarray]:
        return [rng.integers(1, 5, (L, L)).astype(np.uint16)]

    return [
        Img(
            "ade20k/ADE_train_00000001.jpg",
            {
                "color": color(),
                "object": [bands([(5, 4), (6, 5), (CAR, 3), (7, 2)])],
                "part": [bands([(8, 3), (9, 4), (7, 2)]), bands([(0, 3), (7, 2), (8, 1)])],
            },
            {"scene": [12]},
            {"part"},
        ),
        Img(
            "ade20k/ADE_train_00000002.jpg",
            {"color": color(), "object": [bands([(5, 6), (10, 4)])], "part": [bands([(9, 5)])]},
            {"scene": [0]},  # the quirk: a scene dropped by the rarity filter
            {"part"},
        ),
        Img(
            "ade20k/ADE_val_00000001.jpg",
            {"color": color(), "object": [bands([(5, 8), (6, 8)])]},
            {"scene": [13]},
        ),
        Img(
            "pascal/2008_000001.jpg",
            {
                "color": color(),
                "object": [bands([(0, 2), (6, 10)])],
                "part": [bands([(8, 4), (7, 3)])],
            },
        ),
        Img(
            "pascal/2008_000002.jpg",
            {"color": color(), "object": [bands([(CAR, 9)])], "part": [bands([(0, 3), (9, 2)])]},
        ),
        Img("pascal/2008_000003.jpg", {"color": color(), "object": [bands([(6, 7)])]}),
        Img("opensurfaces/100.jpg", {"color": color(), "material": [bands([(10, 4), (11, 7)])]}),
        Img("opensurfaces/200.jpg", {"color": color(), "material": [bands([(0, 9), (11, 3)])]}),
        Img("dtd/banded_0001.jpg", {"color": color()}, {"texture": [16]}),
        Img("dtd/striped_0002.jpg", {"color": color()}, {"texture": [14, 16]}),
        Img("dtd/dotted_0003.jpg", {"color": color()}, {"texture": [15, 14]}),
    ]


def encode(labels: np.ndarray) -> Image.Image:
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    return Image.fromarray(rgb)


def make_release(root: Path) -> list[Img]:
    """Write the release; return its images (label maps included)."""
    rng = np.random.default_rng(7)
    imgs = release_images(rng)
    names = {i + 1: n for i, n in enumerate(COLORS)}
    names.update({k: v[0] for k, v in NAMED.items()})
    names.update({k: f"filler{k:03d}-s" for k in FILLERS})
    names[CAR] = "car"
    syns = {k: v[1] for k, v in NAMED.items()}
    freq: dict[tuple[int, str], int] = {}
    cov: dict[tuple[int, str], float] = {}
    rows = []
    for img in imgs:
        stem = img.path[: -len(".jpg")]
        (root / "images" / img.path).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (S, S, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / img.path, quality=90)
        cells = {}
        for cat, layers in img.pixel.items():
            files = []
            for k, layer in enumerate(layers):
                name = f"{stem}_{cat}_{k + 1}.png" if cat in img.layered else f"{stem}_{cat}.png"
                encode(layer).save(root / "images" / name)
                files.append(name)
            cells[cat] = ";".join(files)
            counts = np.bincount(np.stack(layers).ravel())
            for n in np.flatnonzero(counts[1:]) + 1:
                freq[(n, cat)] = freq.get((n, cat), 0) + 1
                # coverage as counted at source resolution: any consistent float will do
                cov[(n, cat)] = cov.get((n, cat), 0.0) + counts[n] / (L * L) / 3
        for cat, numbers in img.scalar.items():
            cells[cat] = ";".join(str(n) for n in numbers)
            for n in numbers:
                if n:
                    freq[(n, cat)] = freq.get((n, cat), 0) + 1
                    cov[(n, cat)] = cov.get((n, cat), 0.0) + 1.0
        row = [img.path, "", S, S, L, L, *(cells.get(c, "") for c in CATEGORIES)]
        row[1] = "train" if hashed_float(img.path) <= 0.7 else "val"
        rows.append(row)
    for n in FILLERS:
        freq[(n, "scene")], cov[(n, "scene")] = 1, 1.0
    rows.sort(key=lambda r: hashed_float(str(r[0])))
    write_csv(root / "index.csv", [["image", "split", "ih", "iw", "sh", "sw", *CATEGORIES], *rows])

    label_rows: list[list[object]] = [
        ["number", "name", "category", "frequency", "coverage", "syns"]
    ]
    for n in range(1, CAR + 1):
        cats = sorted((c for c in CATEGORIES if (n, c) in freq), key=lambda c: (-freq[(n, c)], c))
        label_rows.append([
            n,
            names[n],
            ";".join(f"{c}({freq[(n, c)]})" for c in cats),
            sum(freq[(n, c)] for c in cats),
            f"{sum(cov[(n, c)] for c in cats):f}",
            syns.get(n, ""),
        ])  # fmt: skip
    write_csv(root / "label.csv", label_rows)
    cat_rows: list[list[object]] = [["name", "first", "last", "count", "frequency"]]
    for cat in CATEGORIES:
        members = sorted(n for n, c in freq if c == cat)
        cat_rows.append([cat, members[0], members[-1], len(members),
                         sum(freq[(n, cat)] for n in members)])  # fmt: skip
        coded = sorted(members, key=lambda n: (-freq[(n, cat)], -cov[(n, cat)], n))
        write_csv(
            root / f"c_{cat}.csv",
            [["code", "number", "name", "frequency", "coverage"]]
            + [
                [i, n, names[n], freq[(n, cat)], py2_str(cov[(n, cat)])]
                for i, n in enumerate(coded, 1)
            ],  # fmt: skip
        )
    write_csv(root / "category.csv", cat_rows)
    (root / "README.txt").write_text(
        f"{root.name} joined segmentation data set\n{'=' * 40}\nsize: ({S}, {S})\n"
    )
    return imgs


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Img]]:
    root = tmp_path_factory.mktemp("legacy") / "broden1_32"
    return root, make_release(root)


@pytest.fixture
def adapter(release: tuple[Path, list[Img]]) -> BrodenLegacy:
    a = BrodenLegacy.from_config({"root": str(release[0])})
    a.check()
    return a  # type: ignore[return-value]


class TestBrodenLegacyContract(AdapterContract):
    """The generated broden1_32 release: samples at its own sizes (32² images, 16² maps)."""

    manifest_required = True

    def make_adapter(self, release: tuple[Path, list[Img]]) -> Adapter:
        return BrodenLegacy.from_config({"root": str(release[0])})


def decode_png(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1]


# -- the adapter ----------------------------------------------------------------------------


def test_adapter_is_registered_with_broden1_categories() -> None:
    assert get_adapter_class("broden_legacy") is BrodenLegacy
    assert BrodenLegacy.kinds == BRODEN1_KINDS


def test_categories_and_kinds_come_from_the_release(adapter: BrodenLegacy) -> None:
    assert adapter.categories == tuple(CATEGORIES)
    assert adapter.kinds == {c: ("image" if c in ("scene", "texture") else "pixel")
                             for c in CATEGORIES}  # fmt: skip
    assert adapter.kind("texture") == "image"
    assert adapter.release_version() == "broden1_32"


def test_a_category_subset_is_checked_against_the_release(release: tuple[Path, list[Img]]) -> None:
    root = release[0]
    a = BrodenLegacy.from_config({"root": str(root)}, ["texture", "object"])
    assert a.categories == ("object", "texture")
    assert set(a.vocabulary()) == {"object", "texture"}
    with pytest.raises(SourceError, match=r"does not supply categories \['sky'\]; Broden release"):
        BrodenLegacy.from_config({"root": str(root)}, ["sky"]).check()


def test_prebuilt_keeps_release_numbers_names_and_sizes(
    adapter: BrodenLegacy, release: tuple[Path, list[Img]]
) -> None:
    pre = adapter.prebuilt()
    assert (pre.image_size, pre.label_size) == (S, L)
    labels = read_rows(release[0] / "label.csv")[1:]
    assert [(c["id"], c["name"]) for c in pre.concepts] == [(int(r[0]), r[1]) for r in labels]
    person = pre.concepts[5]
    assert person["synonyms"] == ["individual", "someone"]
    assert person["category"] == "object"
    for concept, row in zip(pre.concepts, labels, strict=True):
        assert ";".join(f"{s['name']}({s['frequency']})" for s in concept["categories"]) == row[2]
        assert f"{concept['coverage']:f}" == row[4]


def test_primary_category_is_largest_coverage_ties_to_the_later_category(
    adapter: BrodenLegacy,
) -> None:
    concepts = {c["name"]: c for c in adapter.prebuilt().concepts}
    leg = {s["name"]: s["coverage"] for s in concepts["leg"]["categories"]}
    assert leg["part"] > leg["object"] and concepts["leg"]["category"] == "part"
    wood = {s["name"]: s["coverage"] for s in concepts["wood"]["categories"]}
    assert wood["object"] == wood["material"]  # a tie: material comes later in category.csv
    assert concepts["wood"]["category"] == "material"


def test_vocabulary_lists_the_members_of_each_category(adapter: BrodenLegacy) -> None:
    vocab = adapter.vocabulary()
    assert vocab["color"] == {i + 1: [n] for i, n in enumerate(COLORS)}
    assert set(vocab["object"]) == {5, 6, 7, 10, CAR}
    assert set(vocab["part"]) == {7, 8, 9}
    assert vocab["object"][CAR] == ["car"]
    assert len(vocab["scene"]) == 2 + len(FILLERS)


def test_load_decodes_layers_numbers_and_the_zero_scene(
    adapter: BrodenLegacy, release: tuple[Path, list[Img]]
) -> None:
    by_path = {img.path: img for img in release[1]}
    assert sorted(adapter.source_id(i) for i in range(len(adapter))) == sorted(by_path)
    for i in range(len(adapter)):
        sample = adapter.load(i)
        img = by_path[sample.source_id]
        assert sample.image.shape == (S, S, 3) and sample.image.dtype == np.uint8
        assert set(sample.pixel) == set(img.pixel)
        for cat, layers in img.pixel.items():
            assert sample.pixel[cat].dtype == np.uint16
            np.testing.assert_array_equal(sample.pixel[cat], np.stack(layers))
        expected = {c: [n for n in v if n] for c, v in img.scalar.items()}
        assert sample.image_labels == {c: v for c, v in expected.items() if v}
    ids = [adapter.source_id(i) for i in range(len(adapter))]
    first = ids.index("ade20k/ADE_train_00000001.jpg")
    assert adapter.load(first).pixel["part"].shape == (2, L, L)
    assert CAR in adapter.load(first).pixel["object"]


def copy_release(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_bytes().decode()
    assert old in text
    path.write_bytes(text.replace(old, new, 1).encode())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "label.csv").unlink(), "label.csv is missing"),
        (
            lambda r: rewrite(r / "category.csv", "name,first", "nom,first"),
            "category.csv has header",
        ),
        (lambda r: rewrite(r / "index.csv", ",32,32,16,16,", ",64,64,32,32,"), "one image size"),
        (lambda r: rewrite(r / "c_object.csv", ",car,", ",auto,"), "named 'auto'"),
        (lambda r: rewrite(r / "label.csv", "\r\n2,", "\r\n3,"), "expected 2"),
        (lambda r: rewrite(r / "index.csv", ";14\r\n", ";dtd/x.png\r\n"), "holds either"),
        (lambda r: shutil.rmtree(r), "does not exist"),
    ],
)
def test_check_names_the_file_and_the_problem(
    release: tuple[Path, list[Img]], tmp_path: Path, damage, message: str
) -> None:
    root = copy_release(release[0], tmp_path / "broden1_32")
    damage(root)
    with pytest.raises(SourceError, match=message):
        BrodenLegacy.from_config({"root": str(root)}).check()


# -- release → store → release ---------------------------------------------------------------


def legacy_config(root: Path, **overrides: object):
    data: dict[str, object] = {
        "image_size": S,
        "colors": False,
        "shard_size": 4,
        "task_size": 3,
        "sources": [{"adapter": "broden_legacy", "root": str(root)}],
    }
    data.update(overrides)
    return parse_config(data)


@pytest.fixture(scope="module")
def imported(release: tuple[Path, list[Img]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "store.zarr"
    summary = build(legacy_config(release[0]), out, progress=False)
    assert not summary.skipped, summary.format()
    return out


@pytest.fixture(scope="module")
def reexported(imported: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reexported") / "broden1_32"
    export_legacy(imported, out, progress=False)
    return out


def test_imported_store_has_the_release_concepts(
    imported: Path, release: tuple[Path, list[Img]]
) -> None:
    store = open_store(imported)
    labels = read_rows(release[0] / "label.csv")[1:]
    assert [(c.id, c.name) for c in store.concepts] == [(int(r[0]), r[1]) for r in labels]
    assert (store.image_size, store.label_size) == (S, L)
    rows = read_rows(release[0] / "index.csv")[1:]
    assert [store.sample(i).source_id for i in range(len(store))] == [r[0] for r in rows]
    zero = [r[0] for r in rows].index("ade20k/ADE_train_00000002.jpg")
    assert not store.sample(zero).image_labels["scene"].any()  # "0" became no label


def test_round_trip_reproduces_the_csv_files(
    reexported: Path, release: tuple[Path, list[Img]]
) -> None:
    root = release[0]
    names = sorted(p.name for p in root.glob("*.csv"))
    assert sorted(p.name for p in reexported.glob("*.csv")) == names
    for name in names:
        if name == "index.csv":
            continue
        assert read_rows(reexported / name) == read_rows(root / name), name
        assert (reexported / name).read_bytes() == (root / name).read_bytes(), name
    scalar = [CATEGORIES.index(c) + 6 for c in ("scene", "texture")]
    expected = read_rows(root / "index.csv")
    for row in expected[1:]:
        for col in scalar:  # the one deliberate difference: a "0" label is no label
            row[col] = ";".join(t for t in row[col].split(";") if t != "0")
    assert read_rows(reexported / "index.csv") == expected


def test_round_trip_reproduces_the_label_maps(
    reexported: Path, release: tuple[Path, list[Img]]
) -> None:
    rows = read_rows(release[0] / "index.csv")
    for row in rows[1:]:
        for cell in row[6:]:
            if not cell or cell.replace(";", "").isdigit():
                continue
            for name in cell.split(";"):
                original = decode_png(release[0] / "images" / name)
                np.testing.assert_array_equal(decode_png(reexported / "images" / name), original)
        image = np.asarray(Image.open(reexported / "images" / row[0]))
        assert image.shape == (S, S, 3)


def two_releases(root: Path) -> list[dict[str, str]]:
    return [{"adapter": "broden_legacy", "root": str(root), "name": n} for n in ("a", "b")]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_size": 64}, "image_size"),
        ({"colors": True}, "colors"),
        ({"sources": "two releases"}, "only source"),
    ],
)
def test_a_release_is_imported_alone_at_its_own_size_with_its_own_colors(
    release: tuple[Path, list[Img]], tmp_path: Path, overrides: dict, message: str
) -> None:
    if overrides.get("sources") == "two releases":
        overrides = {"sources": two_releases(release[0])}
    with pytest.raises((SourceError, BuildError, ConfigError), match=message) as err:
        build(legacy_config(release[0], **overrides), tmp_path / "s.zarr", progress=False)
    if "image_size" in overrides:
        assert str(S) in str(err.value)  # the message names the release's size


# -- export of a store built from sources --------------------------------------------------


@pytest.fixture(scope="module")
def sample_export(sample_store_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "broden_sample"
    summary = export_legacy(sample_store_path, out, progress=False)
    assert summary.images == len(open_store(sample_store_path))
    return out


def read_release(root: Path) -> list[tuple[dict[str, str], dict[str, list]]]:
    """An independent reader written from NetDissect's loader conventions: numeric tokens
    are whole-image labels, other tokens PNG files under images/ decoded R + 256·G."""
    out = []
    with open(root / "index.csv", newline="") as f:
        for row in csv.DictReader(f):
            labels: dict[str, list] = {}
            for cat in list(row)[6:]:
                tokens = [t for t in row[cat].split(";") if t]
                labels[cat] = [
                    int(t) if t.isdigit() else decode_png(root / "images" / t) for t in tokens
                ]
            out.append((row, labels))
    return out


def test_export_of_a_built_store_decodes_back_to_the_store(
    sample_store_path: Path, sample_export: Path
) -> None:
    store = open_store(sample_store_path)
    rows = read_release(sample_export)
    assert len(rows) == len(store)
    kinds = {c.name: c.kind for c in store.categories}
    for i, (row, labels) in enumerate(rows):
        s = store.sample(i)
        assert row["image"].startswith(f"{s.source}/")
        assert row["split"] == s.split
        size, label_size = str(store.image_size), str(store.label_size)
        assert (row["ih"], row["iw"], row["sh"], row["sw"]) == (size, size, label_size, label_size)
        image = np.asarray(Image.open(sample_export / "images" / row["image"]).convert("RGB"))
        assert np.abs(image.astype(int) - s.image.astype(int)).mean() < 4  # JPEG q95
        assert set(labels) >= set(kinds)
        for cat, kind in kinds.items():
            if kind == "image":
                assert labels[cat] == [int(v) for v in s.image_labels[cat] if v]
                continue
            stored = s.pixel[cat]
            got = labels[cat]
            assert all(isinstance(g, np.ndarray) for g in got)
            want = [layer for layer in stored]
            while want and not want[-1].any():
                want.pop()
            assert len(got) == len(want), (row["image"], cat)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)


def test_export_of_a_built_store_lists_its_concept_table(
    sample_store_path: Path, sample_export: Path
) -> None:
    store = open_store(sample_store_path)
    labels = read_rows(sample_export / "label.csv")
    assert labels[0] == ["number", "name", "category", "frequency", "coverage", "syns"]
    assert [(int(r[0]), r[1]) for r in labels[1:]] == [(c.id, c.name) for c in store.concepts]
    cats = read_rows(sample_export / "category.csv")
    assert cats[0] == ["name", "first", "last", "count", "frequency"]
    firsts = [int(r[1]) for r in cats[1:]]
    assert firsts == sorted(firsts)
    header = read_rows(sample_export / "index.csv")[0]
    assert header[6:] == [r[0] for r in cats[1:]]
    for r in cats[1:]:
        coded = read_rows(sample_export / f"c_{r[0]}.csv")[1:]
        assert [int(c[0]) for c in coded] == list(range(1, len(coded) + 1))
        assert len(coded) == int(r[3])
        numbers = [int(c[1]) for c in coded]
        assert (min(numbers), max(numbers)) == (int(r[1]), int(r[2]))
        for c in coded:
            concept = store.concept(int(c[1]))
            stat = next(s for s in concept.categories if s.name == r[0])
            assert (c[2], int(c[3])) == (concept.name, stat.frequency)
            assert float(c[4]) == pytest.approx(stat.coverage, rel=1e-11)
    assert "joined segmentation data set" in (sample_export / "README.txt").read_text()


def test_export_refuses_a_folder_that_is_not_empty(sample_store_path: Path, tmp_path: Path) -> None:
    (tmp_path / "index.csv").write_text("")
    with pytest.raises(ExportError, match="not empty"):
        export_legacy(sample_store_path, tmp_path, progress=False)


def test_cli_export_legacy(sample_store_path: Path, tmp_path: Path) -> None:
    from broden.cli import app

    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["export-legacy", str(sample_store_path), str(out), "--quiet",
                                 "--jpeg-quality", "80"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "images: " in result.output and (out / "index.csv").exists()
    again = runner.invoke(app, ["export-legacy", str(sample_store_path), str(out), "--quiet"])
    assert again.exit_code == 2 and "not empty" in again.output
    missing = runner.invoke(
        app, ["export-legacy", str(tmp_path / "nope.zarr"), str(tmp_path / "x")]
    )
    assert missing.exit_code == 2 and "no such store" in missing.output


def test_colliding_image_names_get_a_number_before_jpg() -> None:
    namer = _Namer()
    assert [namer.claim("dtd", n) for n in ["a.jpg", "a.jpg", "A.jpg", "a2.jpg"]] == [
        "a.jpg", "a2.jpg", "A3.jpg", "a22.jpg",
    ]  # fmt: skip
    assert namer.claim("ade20k", "a.jpg") == "a.jpg"


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.0, "1.0"), (120.0, "120.0"), (0.910724454131, "0.910724454131"), (1 / 3, "0.333333333333"),
     (1e-05, "1e-05"), (123456789012345.0, "1.23456789012e+14"), (4.225474, "4.225474")],
)  # fmt: skip
def test_coverage_is_printed_like_python2_str(value: float, text: str) -> None:
    assert py2_float_str(value) == text
