"""The pascal adapter on real Pascal-Part files (tests/data/pascal_part) and on
Pascal-Context files generated here in the release's exact format (LabelMap uint16 in
``trainval/<id>.mat``, ``labels.txt`` with the 459 real names)."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from broden.adapters import Adapter, SampleError, SourceError
from broden.adapters.pascal import (
    POSITIONAL_WORDS,
    Pascal,
    bundled_part_table,
    parse_part2ind,
    readable_part_name,
)
from broden.adapters.testing import AdapterContract

DATA = Path(__file__).parent / "data"
PARTS = DATA / "pascal_part"
IMAGES = PARTS / "VOCdevkit" / "VOC2010" / "JPEGImages"
LABELS_TXT = DATA / "pascal_context" / "labels.txt"
IDS = sorted(p.stem for p in (PARTS / "Annotations_Part").glob("*.mat"))

# The readable name of every part code in the fixtures, written out independently of
# the adapter's table: positional words gone, one name per body part.
EXPECTED_NAME = {
    "head": "head", "leye": "eye", "reye": "eye", "lear": "ear", "rear": "ear",
    "lebrow": "eyebrow", "rebrow": "eyebrow", "nose": "nose", "mouth": "mouth",
    "hair": "hair", "torso": "torso", "neck": "neck", "llarm": "arm", "luarm": "arm",
    "rlarm": "arm", "ruarm": "arm", "lhand": "hand", "rhand": "hand", "llleg": "leg",
    "luleg": "leg", "rlleg": "leg", "ruleg": "leg", "lfoot": "foot", "rfoot": "foot",
    "lfleg": "leg", "rfleg": "leg", "lbleg": "leg", "rbleg": "leg", "lfpa": "paw",
    "rfpa": "paw", "lbpa": "paw", "rbpa": "paw", "tail": "tail", "muzzle": "muzzle",
    "beak": "beak", "lleg": "leg", "rleg": "leg", "screen": "screen",
}  # fmt: skip
PART_CLASS_TO_CONTEXT = {"table": "table", "diningtable": "table"}


def context_labels() -> dict[str, int]:
    labels = {}
    for line in LABELS_TXT.read_text().splitlines():
        n, name = line.split(": ")
        labels[name] = int(n)
    return labels


def raw_objects(image_id: str) -> list[tuple[str, np.ndarray, list[tuple[str, np.ndarray]]]]:
    """(class, object mask, [(part code, mask)]) per instance, read straight from the .mat."""
    anno = scipy.io.loadmat(PARTS / "Annotations_Part" / f"{image_id}.mat")["anno"][0, 0]
    out = []
    objects = anno["objects"]
    for k in range(objects.shape[1]):
        obj = objects[0, k]
        parts = obj["parts"]
        plist = [
            (str(parts[0, j]["part_name"][0]), parts[0, j]["mask"].astype(bool))
            for j in range(parts.shape[1] if parts.size else 0)
        ]
        out.append((str(obj["class"][0]), obj["mask"].astype(bool), plist))
    return out


def expected_part_counts(image_id: str, reverse: bool = False) -> Counter[tuple[str, str]]:
    """Pixels per (object class, part name), painting instances and their parts in file
    order, later over earlier (or the other way round with ``reverse``)."""
    objects = raw_objects(image_id)
    if not objects:
        return Counter()
    keys: list[tuple[str, str]] = []
    painted = np.full(objects[0][1].shape, -1)
    order = objects[::-1] if reverse else objects
    for cls, _, parts in order:
        for code, mask in parts[::-1] if reverse else parts:
            key = (PART_CLASS_TO_CONTEXT.get(cls, cls), EXPECTED_NAME[code])
            if key not in keys:
                keys.append(key)
            painted[mask] = keys.index(key)
    values, counts = np.unique(painted[painted >= 0], return_counts=True)
    return Counter({keys[v]: int(c) for v, c in zip(values, counts, strict=True)})


def write_context(root: Path, ids: list[str]) -> Path:
    """A Pascal-Context folder for ``ids``: labels.txt and LabelMaps built from the
    Pascal-Part object masks (top half wall, bottom half unknown, objects on top)."""
    ctx = root / "context"
    (ctx / "trainval").mkdir(parents=True)
    shutil.copy(LABELS_TXT, ctx / "labels.txt")
    labels = context_labels()
    for image_id in ids:
        objects = raw_objects(image_id)
        shape = objects[0][1].shape
        label_map = np.full(shape, labels["unknown"], np.uint16)
        label_map[: shape[0] // 2] = labels["wall"]
        for cls, mask, _ in objects:
            label_map[mask] = labels[PART_CLASS_TO_CONTEXT.get(cls, cls)]
        scipy.io.savemat(ctx / "trainval" / f"{image_id}.mat", {"LabelMap": label_map})
    return ctx


@pytest.fixture(scope="module")
def context_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_context(tmp_path_factory.mktemp("pascal"), IDS)


@pytest.fixture(scope="module")
def both(context_dir: Path) -> Pascal:
    adapter = Pascal.from_config({"images": IMAGES, "context": context_dir, "parts": PARTS})
    adapter.check()
    assert isinstance(adapter, Pascal)
    return adapter


def decoded_part_counts(adapter: Pascal, index: int) -> Counter[tuple[str, str]]:
    """Pixels per (object name of the part_of parent, part name) in the adapter's sample."""
    sample = adapter.load(index)
    vocab = adapter.vocabulary()
    parent = {e.part: vocab["object"][e.parent][0] for e in sample.part_of}
    if "part" not in sample.pixel:
        return Counter()
    values, counts = np.unique(sample.pixel["part"], return_counts=True)
    return Counter(
        {
            (parent[int(v)], vocab["part"][int(v)][0]): int(c)
            for v, c in zip(values, counts, strict=True)
            if v
        }
    )


# -- parts ---------------------------------------------------------------------------------


def test_images_are_the_part_annotations_sorted(both: Pascal) -> None:
    assert [both.source_id(i) for i in range(len(both))] == IDS
    assert len(IDS) == 12


@pytest.mark.parametrize("image_id", IDS)
def test_part_pixels_match_the_mat_masks_painted_in_file_order(both: Pascal, image_id: str) -> None:
    index = IDS.index(image_id)
    assert decoded_part_counts(both, index) == expected_part_counts(image_id)


@pytest.mark.parametrize("image_id", ["2008_003228", "2010_002526", "2010_005511"])
def test_part_painting_keeps_later_instances(both: Pascal, image_id: str) -> None:
    # these images have overlapping instances: the order of painting decides pixels
    assert expected_part_counts(image_id) != expected_part_counts(image_id, reverse=True)
    assert decoded_part_counts(both, IDS.index(image_id)) == expected_part_counts(image_id)


@pytest.mark.parametrize("image_id", ["2010_000145", "2010_001199"])
def test_silhouette_only_objects_give_no_part_pixels(both: Pascal, image_id: str) -> None:
    # 2010_000145: a boat; 2010_001199: four chairs and a table, all with parts 0×0
    sample = both.load(IDS.index(image_id))
    assert "part" not in sample.pixel or not sample.pixel["part"].any()
    assert sample.part_of == []
    assert sample.pixel["object"].any()  # the objects themselves still come from context


def test_image_without_objects_gives_no_part_pixels(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    (parts / "Annotations_Part").mkdir(parents=True)
    anno = scipy.io.loadmat(PARTS / "Annotations_Part" / "2010_000145.mat")["anno"]
    objects = anno[0, 0]["objects"]
    anno[0, 0]["objects"] = np.zeros((1, 0), dtype=objects.dtype)  # as the release writes it
    scipy.io.savemat(parts / "Annotations_Part" / "2010_000145.mat", {"anno": anno})
    sample = Pascal.from_config({"images": IMAGES, "parts": parts}).load(0)
    assert sample.pixel == {} and sample.part_of == []


def test_part_names_have_no_positional_words(both: Pascal) -> None:
    names = {n for names in both.vocabulary()["part"].values() for n in names}
    for name in names:
        words = name.split()
        # the one exception: a name made only of positional words keeps its last one
        assert name == "side" or not set(words) & POSITIONAL_WORDS, name
    assert {"leg", "ear", "eye", "paw", "hoof", "wheel", "license plate", "mirror"} <= names
    assert "airplane" not in names and not any("aeroplane" in n for n in names)


def test_one_part_id_per_class_and_readable_name(both: Pascal) -> None:
    vocab = both.vocabulary()["part"]
    legs = [i for i, names in vocab.items() if names == ["leg"]]
    # bird, cat, cow, dog, horse, person, sheep each have their own "leg" id
    assert len(legs) == 7
    # engine_1 .. engine_10 of the airplane are one id
    assert sum(names == ["engine"] for names in vocab.values()) == 1


def test_readable_part_names_expand_short_codes() -> None:
    assert readable_part_name("lfleg", "left front leg") == "leg"
    assert readable_part_name("lfho", "lfho") == "hoof"
    assert readable_part_name("fwheel", "fwheel") == "wheel"
    assert readable_part_name("fliplate", "front license plate") == "license plate"
    assert readable_part_name("engine_3", "engine") == "engine"
    assert readable_part_name("hfrontside", "head front side") == "head"
    assert readable_part_name("cfrontside_2", "coach front side") == "coach"
    assert readable_part_name("llarm", "left lower arm") == "arm"
    assert readable_part_name("frontside", "frontside") == "side"


def test_part_of_points_parts_at_their_object_class(both: Pascal) -> None:
    objects = both.vocabulary()["object"]
    parts = both.vocabulary()["part"]
    sample = both.load(IDS.index("2008_006462"))  # one cat with a left front leg
    edges = {(parts[e.part][0], objects[e.parent][0]): e.pixels for e in sample.part_of}
    assert ("leg", "cat") in edges and ("paw", "cat") in edges
    counts = expected_part_counts("2008_006462")
    assert edges[("leg", "cat")] == counts[("cat", "leg")]
    # a person and a cat in one image: each part points at its own class
    sample = both.load(IDS.index("2008_003228"))
    pairs = {(parts[e.part][0], objects[e.parent][0]) for e in sample.part_of}
    assert {("head", "cat"), ("head", "person"), ("tail", "cat"), ("hair", "person")} <= pairs


def test_parts_without_context_give_no_part_of_edges() -> None:
    adapter = Pascal.from_config({"images": IMAGES, "parts": PARTS})
    adapter.check()
    assert adapter.categories == ("part",)
    sample = adapter.load(IDS.index("2008_006462"))
    assert sample.pixel["part"].any() and sample.part_of == []
    assert "object" not in sample.pixel


def _rewrite_part(tmp_path: Path, image_id: str, new_code: str) -> Path:
    """A parts folder holding one real .mat whose first part is renamed ``new_code``."""
    parts = tmp_path / "parts"
    (parts / "Annotations_Part").mkdir(parents=True)
    mat = scipy.io.loadmat(PARTS / "Annotations_Part" / f"{image_id}.mat")
    mat["anno"][0, 0]["objects"][0, 0]["parts"][0, 0]["part_name"] = np.array([new_code])
    scipy.io.savemat(parts / "Annotations_Part" / f"{image_id}.mat", {"anno": mat["anno"]})
    return parts


def test_unknown_part_code_is_a_sample_error(tmp_path: Path) -> None:
    parts = _rewrite_part(tmp_path, "2008_006462", "lwing")  # a bird's part on a cat
    adapter = Pascal.from_config({"images": IMAGES, "parts": parts})
    with pytest.raises(SampleError, match=r"2008_006462\.mat: object 1 \(cat\) has part 'lwing'"):
        adapter.load(0)


def test_part_mask_of_another_size_is_a_sample_error(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    (parts / "Annotations_Part").mkdir(parents=True)
    mat = scipy.io.loadmat(PARTS / "Annotations_Part" / "2008_001978.mat")
    part = mat["anno"][0, 0]["objects"][0, 0]["parts"][0, 0]
    part["mask"] = np.ones((10, 20), np.uint8)
    scipy.io.savemat(parts / "Annotations_Part" / "2008_001978.mat", {"anno": mat["anno"]})
    adapter = Pascal.from_config({"images": IMAGES, "parts": parts})
    with pytest.raises(SampleError, match=r"2008_001978\.mat: mask of part 'torso' is 20×10"):
        adapter.load(0)


# -- part2ind.m ----------------------------------------------------------------------------

# Written here in the release's MATLAB syntax: commented and uncommented assignments,
# for loops over sprintf'd codes, copies through keySet/valueSet, remove(), the
# silhouette comments, the map initialisation and tab-indented continuation comments.
PART2IND_SNIPPET = """\
function pimap = part2ind()
% Define the part index of each objects.
pimap = cell(20, 1);
for ii = 1:20
    pimap{ii} = containers.Map('KeyType','char','ValueType','int32');
end

% [aeroplane]
pimap{1}('body')        = 1;
pimap{1}('stern')       = 2;
pimap{1}('lwing')       = 3;                % left wing
pimap{1}('rwing')       = 4;                % right wing
pimap{1}('tail')        = 5;
for ii = 1:10
    pimap{1}(sprintf('engine_%d', ii)) = 10+ii; % multiple engines
end
for ii = 1:10
    pimap{1}(sprintf('wheel_%d', ii)) = 20+ii;  % multiple wheels
end

% [boat]
% only has silhouette mask

% [bus]
pimap{6}('frontside')   = 1;
pimap{6}('leftside')    = 2;
pimap{6}('rightside')   = 3;
pimap{6}('backside')    = 4;
pimap{6}('roofside')    = 5;
pimap{6}('leftmirror')  = 6;
pimap{6}('rightmirror') = 7;
pimap{6}('fliplate')    = 8;                % front license plate
pimap{6}('bliplate')    = 9;                % back license plate
for ii = 1:10
    pimap{6}(sprintf('door_%d',ii)) = 10 + ii;
end
for ii = 1:10
    pimap{6}(sprintf('wheel_%d',ii)) = 20 + ii;
end
for ii = 1:10
    pimap{6}(sprintf('headlight_%d',ii)) = 30 + ii;
end
for ii = 1:20
    pimap{6}(sprintf('window_%d',ii)) = 40 + ii;
end

% [car]
keySet = keys(pimap{6});
valueSet = values(pimap{6});
pimap{7} = containers.Map(keySet, valueSet);         % car has the same parts as bus

% [cat]
pimap{8}('head')        = 1;
pimap{8}('leye')        = 2;                % left eye
pimap{8}('reye')        = 3;                % right eye
pimap{8}('lear')        = 4;                % left ear
pimap{8}('rear')        = 5;                % right ear
pimap{8}('nose')        = 6;
pimap{8}('torso')       = 7;
pimap{8}('neck')        = 8;
pimap{8}('lfleg')       = 9;                % left front leg
pimap{8}('lfpa')        = 10;               % left front paw
pimap{8}('rfleg')       = 11;               % right front leg
pimap{8}('rfpa')        = 12;               % right front paw
pimap{8}('lbleg')       = 13;               % left back leg
pimap{8}('lbpa')        = 14;               % left back paw
pimap{8}('rbleg')       = 15;               % right back leg
pimap{8}('rbpa')        = 16;               % right back paw
pimap{8}('tail')        = 17;

% [cow]
pimap{10}('head')       = 1;
pimap{10}('leye')       = 2;                % left eye
pimap{10}('reye')       = 3;                % right eye
pimap{10}('lear')       = 4;                % left ear
pimap{10}('rear')       = 5;                % right ear
pimap{10}('muzzle')     = 6;
pimap{10}('lhorn')      = 7;                % left horn
pimap{10}('rhorn')      = 8;                % right horn
pimap{10}('torso')      = 9;
pimap{10}('neck')       = 10;
pimap{10}('lfuleg')     = 11;               % left front upper leg
pimap{10}('lflleg')     = 12;               % left front lower leg
pimap{10}('rfuleg')     = 13;               % right front upper leg
pimap{10}('rflleg')     = 14;               % right front lower leg
pimap{10}('lbuleg')     = 15;               % left back upper leg
pimap{10}('lblleg')     = 16;               % left back lower leg
pimap{10}('rbuleg')     = 17;               % right back upper leg
pimap{10}('rblleg')     = 18;               % right back lower leg
pimap{10}('tail')       = 19;

% [diningtable]
% only has sihouette mask

% [dog]
keySet = keys(pimap{8});
valueSet = values(pimap{8});
pimap{12} = containers.Map(keySet, valueSet);\t\t% dog has the parts of cat,
\t\t\t\t\t\t% and a muzzle
pimap{12}('muzzle')     = 20;

% [horse]
keySet = keys(pimap{10});
valueSet = values(pimap{10});
pimap{13} = containers.Map(keySet, valueSet);        % hoofs instead of horns
remove(pimap{13}, {'lhorn', 'rhorn'});
pimap{13}('lfho') = 30;
pimap{13}('rfho') = 31;
pimap{13}('lbho') = 32;
pimap{13}('rbho') = 33;

% [motorbike]
pimap{14}('fwheel')     = 1;
pimap{14}('bwheel')     = 2;
pimap{14}('handlebar')  = 3;
pimap{14}('saddle')     = 4;
for ii = 1:10
    pimap{14}(sprintf('headlight_%d', ii)) = 10 + ii;
end

% [train]
pimap{19}('head')       = 1;
pimap{19}('hfrontside') = 2;                \t% head front side
pimap{19}('hleftside')  = 3;                \t% head left side
pimap{19}('hrightside') = 4;                \t% head right side
pimap{19}('hbackside')  = 5;                \t% head back side
pimap{19}('hroofside')  = 6;                \t% head roof side

for ii = 1:10
    pimap{19}(sprintf('headlight_%d',ii)) = 10 + ii;
end

for ii = 1:10
    pimap{19}(sprintf('coach_%d',ii)) = 20 + ii;
end

for ii = 1:10
    pimap{19}(sprintf('cfrontside_%d', ii)) = 30 + ii;   % coach front side
end

for ii = 1:10
    pimap{19}(sprintf('cleftside_%d', ii)) = 40 + ii;   % coach left side
end

for ii = 1:10
    pimap{19}(sprintf('crightside_%d', ii)) = 50 + ii;  % coach right side
end

for ii = 1:10
    pimap{19}(sprintf('cbackside_%d', ii)) = 60 + ii;   % coach back side
end

for ii = 1:10
    pimap{19}(sprintf('croofside_%d', ii)) = 70 + ii;   % coach roof side
end
"""


def test_part2ind_parser_reads_the_release_syntax_like_the_bundled_table() -> None:
    parsed = parse_part2ind(PART2IND_SNIPPET)
    classes = {r.class_index for r in parsed}
    assert classes == {1, 6, 7, 8, 10, 12, 13, 14, 19}
    bundled = [r for r in bundled_part_table() if r.class_index in classes]
    assert [(r.class_index, r.code, r.index) for r in parsed] == [
        (r.class_index, r.code, r.index) for r in bundled
    ]
    # the transcription spells out some codes the file leaves bare (lfho): same names
    assert [readable_part_name(r.code, r.description) for r in parsed] == [
        readable_part_name(r.code, r.description) for r in bundled
    ]
    descriptions = {(r.class_index, r.code): r.description for r in parsed}
    assert descriptions[(1, "lwing")] == "left wing"
    assert descriptions[(1, "engine_7")] == "engine"  # "multiple engines" is no description
    assert descriptions[(19, "cfrontside_3")] == "coach front side"
    assert (13, "lhorn") not in descriptions and (12, "muzzle") in descriptions
    assert descriptions[(7, "fliplate")] == "front license plate"  # copied from bus


def test_part2ind_parser_names_the_bad_line() -> None:
    with pytest.raises(SourceError, match=r"part2ind\.m:2: unrecognised statement"):
        parse_part2ind("pimap{1}('body') = 1;\npimap{1}.body = 2;\n")
    with pytest.raises(SourceError, match="class index 21"):
        parse_part2ind("pimap{21}('body') = 1;\n")


def test_release_part2ind_is_read_instead_of_the_bundled_table(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    (parts / "Annotations_Part").mkdir(parents=True)
    shutil.copy(PARTS / "Annotations_Part" / "2008_006462.mat", parts / "Annotations_Part")
    cat = [line for line in PART2IND_SNIPPET.splitlines() if line.startswith("pimap{8}(")]
    text = "\n".join(cat).replace("% left front paw", "% left front forepaw")
    (parts / "part2ind.m").write_text(text + "\n")
    adapter = Pascal.from_config({"images": IMAGES, "parts": parts})
    adapter.check()
    names = {n[0] for n in adapter.vocabulary()["part"].values()}
    assert "forepaw" in names and "paw" in names  # rfpa etc. keep "paw"
    sample = adapter.load(0)
    part_ids = {int(v) for v in np.unique(sample.pixel["part"]) if v}
    assert "forepaw" in {adapter.vocabulary()["part"][i][0] for i in part_ids}


def test_bundled_table_matches_its_csv() -> None:
    path = Path(__file__).parent.parent / "data_manifests" / "pascal_part_parts.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(bundled_part_table()) == len(rows) == 384


# -- Pascal-Context ------------------------------------------------------------------------


def test_context_objects_are_labelmap_values_with_unknown_unlabeled(
    both: Pascal, context_dir: Path
) -> None:
    labels = context_labels()
    vocab = both.vocabulary()["object"]
    assert len(vocab) == 458 and labels["unknown"] not in vocab
    assert vocab[labels["cat"]] == ["cat"] and vocab[labels["table"]] == ["table"]
    image_id = "2008_006462"
    raw = scipy.io.loadmat(context_dir / "trainval" / f"{image_id}.mat")["LabelMap"]
    objects = both.load(IDS.index(image_id)).pixel["object"]
    assert objects.shape == (1, *raw.shape) and objects.dtype == np.uint16
    assert np.array_equal(objects[0] == 0, raw == labels["unknown"])
    assert np.array_equal(objects[0][raw != labels["unknown"]], raw[raw != labels["unknown"]])
    assert (objects[0] == labels["cat"]).sum() == (raw == labels["cat"]).sum() > 0


def test_table_parts_map_to_the_context_table_label(both: Pascal) -> None:
    sample = both.load(IDS.index("2010_001199"))  # chairs and a Pascal-Part 'table'
    labels = context_labels()
    present = set(np.unique(sample.pixel["object"]).tolist())
    assert {labels["chair"], labels["table"]} <= present


def test_context_only_lists_the_trainval_mats(tmp_path: Path) -> None:
    ctx = write_context(tmp_path, ["2008_000652", "2010_000145"])
    adapter = Pascal.from_config({"images": IMAGES, "context": ctx})
    adapter.check()
    assert adapter.categories == ("object",)
    assert [adapter.source_id(i) for i in range(len(adapter))] == ["2008_000652", "2010_000145"]
    sample = adapter.load(1)
    assert "part" not in sample.pixel and sample.pixel["object"].any()


@pytest.fixture
def malformed(tmp_path: Path) -> Pascal:
    ctx = write_context(tmp_path, ["2008_003228"])
    trainval = ctx / "trainval"
    good = scipy.io.loadmat(trainval / "2008_003228.mat")["LabelMap"]
    scipy.io.savemat(trainval / "2008_000652.mat", {"Labels": np.ones((213, 320), np.uint16)})
    scipy.io.savemat(trainval / "2008_000700.mat", {"LabelMap": good.astype(np.float64)})
    bad = good.copy()
    bad[5, 7] = 999
    scipy.io.savemat(trainval / "2008_000726.mat", {"LabelMap": np.resize(bad, (240, 320))})
    scipy.io.savemat(trainval / "2008_001978.mat", {"LabelMap": good[:100]})
    adapter = Pascal.from_config({"images": IMAGES, "context": ctx})
    assert isinstance(adapter, Pascal)
    adapter.check()
    return adapter


@pytest.mark.parametrize(
    ("image_id", "message"),
    [
        ("2008_000652", r"2008_000652\.mat: no variable 'LabelMap' \(found \['Labels'\]\)"),
        ("2008_000700", r"2008_000700\.mat: LabelMap has dtype float64; expected integer"),
        ("2008_000726", r"2008_000726\.mat: LabelMap values \[999\] are not label numbers"),
        ("2008_001978", r"2008_001978\.mat: LabelMap is 500×100 but the image .* \(W×H\)"),
    ],
)
def test_malformed_context_files_are_sample_errors(
    malformed: Pascal, image_id: str, message: str
) -> None:
    ids = [malformed.source_id(i) for i in range(len(malformed))]
    with pytest.raises(SampleError, match=message):
        malformed.load(ids.index(image_id))
    malformed.load(ids.index("2008_003228"))  # the good one still loads


def test_missing_context_mat_is_a_sample_error(tmp_path: Path) -> None:
    ctx = write_context(tmp_path, ["2008_000652"])
    adapter = Pascal.from_config({"images": IMAGES, "context": ctx, "parts": PARTS})
    adapter.check()
    adapter.load(IDS.index("2008_000652"))
    with pytest.raises(SampleError, match=r"trainval/2008_000700\.mat: file is missing"):
        adapter.load(IDS.index("2008_000700"))


def test_missing_labels_txt_is_a_source_error(tmp_path: Path) -> None:
    ctx = write_context(tmp_path, ["2008_000652"])
    (ctx / "labels.txt").unlink()
    adapter = Pascal.from_config({"images": IMAGES, "context": ctx})
    with pytest.raises(SourceError, match=r"labels\.txt is missing"):
        adapter.check()


def test_malformed_labels_txt_is_a_source_error(tmp_path: Path) -> None:
    ctx = write_context(tmp_path, ["2008_000652"])
    (ctx / "labels.txt").write_text("1: accordion\n2 aeroplane\n")
    with pytest.raises(SourceError, match=r"labels\.txt:2: expected 'N: name'"):
        Pascal.from_config({"images": IMAGES, "context": ctx}).check()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"context": "nowhere"}, "Pascal-Context folder .*nowhere does not exist"),
        ({"parts": "nowhere"}, "Annotations_Part folder .*nowhere/Annotations_Part"),
        ({"parts": PARTS, "images": "nowhere"}, "images .* folder .*nowhere does not exist"),
    ],
)
def test_missing_folders_are_source_errors_at_check(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    opts = {"images": IMAGES, **options}
    opts = {k: (tmp_path / v if v == "nowhere" else v) for k, v in opts.items()}
    adapter = Pascal.from_config(opts)
    with pytest.raises(SourceError, match=message):
        adapter.check()


@pytest.mark.parametrize(
    ("options", "categories", "message"),
    [
        ({"images": IMAGES}, None, "needs `context`.*or `parts`"),
        ({"root": PARTS, "images": IMAGES, "parts": PARTS}, None, "pascal has no `root`"),
        ({"images": IMAGES, "parts": PARTS}, ["object"], "needs the `context` folder"),
    ],
)
def test_bad_configs_are_source_errors(
    options: dict[str, object], categories: list[str] | None, message: str
) -> None:
    with pytest.raises(SourceError, match=message):
        Pascal.from_config(options, categories)


# -- end to end ----------------------------------------------------------------------------


def test_build_stores_pascal_parts_with_part_of_cat(tmp_path: Path, context_dir: Path) -> None:
    from broden.build import build
    from broden.config import parse_config
    from broden.store import open_store

    config = parse_config(
        {
            "image_size": 32,
            "min_frequency": 1,
            "min_coverage": 0.0,
            "colors": False,
            "sources": [
                {"adapter": "pascal", "images": str(IMAGES), "context": str(context_dir),
                 "parts": str(PARTS)},
            ],
        }
    )  # fmt: skip
    build(config, tmp_path / "s.zarr", progress=False)
    store = open_store(tmp_path / "s.zarr")
    assert len(store) == 12 and store.attrs.build_report.skipped == []
    by_name = {c.name: c for c in store.concepts}
    leg, cat, person = by_name["leg"], by_name["cat"], by_name["person"]
    assert leg.category == "part" and cat.category == "object"
    # images with leg pixels in the raw masks, over all classes
    leg_images = [i for i in IDS if any(n == "leg" for _, n in expected_part_counts(i))]
    assert leg.frequency == len(leg_images)
    edges = {e.id: e.pixels for e in leg.part_of}
    cat_legs = sum(expected_part_counts(i)[("cat", "leg")] for i in IDS)
    person_legs = sum(expected_part_counts(i)[("person", "leg")] for i in IDS)
    assert edges[cat.id] == cat_legs > 0
    assert edges[person.id] == person_legs > 0
    # the cat's legs are in the stored part map of 2008_006462
    row = [store.sample(i).source_id for i in range(len(store))].index("2008_006462")
    pixel, _ = store.labels(row)
    assert (pixel["part"] == leg.id).any() and (pixel["object"] == cat.id).any()


class TestPascalContract(AdapterContract):
    """Real Pascal-Part files with the Pascal-Context files generated above."""

    expected_len = len(IDS)
    manifest_required = True

    def make_adapter(self, context_dir: Path) -> Adapter:
        return Pascal.from_config({"images": IMAGES, "context": context_dir, "parts": PARTS})
