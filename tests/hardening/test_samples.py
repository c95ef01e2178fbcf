"""Bounded work per sample (issue 12, item 5): every hostile sample file ends as a listed
skip with its reason, or (for a source's own index files) one error line; never a hang, a
crash, an unbounded allocation, or a read outside the source's folders.

Each test builds its hostile input in a temporary folder: a decompression bomb (a PNG
whose header says 15000×15000, a few hundred kB on disk; the build's peak memory is
measured in a child process against a clean build in the same run), an image over a
configured lower limit, a FIFO where an image or the index should be, a symbolic link to
a file outside the source, an index line that climbs out of it, and COCO geometry that
would crash or overflow pycocotools."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from broden.adapters import SampleError, SourceError
from broden.adapters.coco import COCO
from broden.adapters.coco_geometry import compact_segmentation
from broden.adapters.decode import read_image, read_png
from broden.adapters.files import ReadLimits, read_regular, reading
from broden.build import build
from broden.cli import app
from broden.config import parse_config
from tests.conftest import REPO
from tests.test_adapter_coco import instances_doc, write_instances

runner = CliRunner()
BANDED = "banded/banded_0001.jpg"


def bomb_png(width: int, height: int) -> bytes:
    """A grey PNG of ``width × height`` zeros, written row by row (never held whole)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    z = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    parts = [z.compress(row) for _ in range(height)]
    idat = b"".join(parts) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def dtd_config(root: Path, **top: Any) -> dict[str, Any]:
    source = {"adapter": "dtd", "root": str(root)}
    return {"min_frequency": 1, "min_coverage": 0, **top, "sources": [source]}


def skipped(cfg: dict[str, Any], out: Path) -> dict[str, str]:
    summary = build(parse_config(cfg), out, progress=False)
    return {s.source_id: s.reason for s in summary.skipped}


# -- the pixel limit ----------------------------------------------------------------------


_CHILD = """
import json, resource, sys
from pathlib import Path
from broden.build import build
from broden.config import parse_config
summary = build(parse_config(json.loads(sys.argv[1])), Path(sys.argv[2]), workers=0,
                progress=False)
print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "skipped": {s.source_id: s.reason for s in summary.skipped}}))
"""


def _build_in_child(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(cfg), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_decompression_bomb_is_skipped_before_any_pixel_is_allocated(
    dtd_copy: Path, tmp_path: Path
) -> None:
    clean = _build_in_child(dtd_config(dtd_copy), tmp_path / "clean.zarr")
    bomb = bomb_png(15000, 15000)  # 225 M pixels: 675 MB as RGB
    assert len(bomb) < 1 << 20
    (dtd_copy / "images" / BANDED).write_bytes(bomb)
    hit = _build_in_child(dtd_config(dtd_copy), tmp_path / "bomb.zarr")
    assert clean["skipped"] == {}
    assert list(hit["skipped"]) == [BANDED]
    reason = hit["skipped"][BANDED]
    assert "15000×15000 = 225,000,000 pixels, over the limit of 178,956,970" in reason
    assert "not decoded" in reason
    grew_mb = (hit["rss_kb"] - clean["rss_kb"]) / 1024
    assert grew_mb < 100, f"peak memory {grew_mb:.0f} MB above a clean build's"


def test_a_lower_configured_limit_skips_larger_images(dtd_copy: Path, tmp_path: Path) -> None:
    big = np.random.default_rng(0).integers(0, 255, (1200, 1000, 3), np.uint8)
    Image.fromarray(big).save(dtd_copy / "images" / BANDED, format="JPEG")
    assert skipped(dtd_config(dtd_copy), tmp_path / "a.zarr") == {}
    got = skipped(dtd_config(dtd_copy, max_image_pixels=1_000_000), tmp_path / "b.zarr")
    assert list(got) == [BANDED]
    assert "1000×1200 = 1,200,000 pixels, over the limit of 1,000,000" in got[BANDED]


def test_the_limit_applies_to_both_decoders(tmp_path: Path) -> None:
    """Pillow decodes palette PNGs and truncated JPEGs; OpenCV the rest: neither runs on an
    image over the limit."""
    f = tmp_path / "x"
    arr = np.zeros((40, 30, 3), np.uint8)
    with reading(ReadLimits(max_image_pixels=1000)):
        for fmt, data in (("PNG", arr), ("JPEG", arr), ("PNG", arr[:, :, 0])):
            Image.fromarray(data).save(f, format=fmt)
            with pytest.raises(SampleError, match="30×40 = 1,200 pixels, over the limit"):
                read_image(f)
        Image.fromarray(arr[:, :, 0]).convert("P").save(f, format="PNG")  # palette: Pillow
        with pytest.raises(SampleError, match="over the limit"):
            read_image(f)
        truncated = tmp_path / "t.jpg"
        noise = np.random.default_rng(0).integers(0, 255, arr.shape, np.uint8)
        Image.fromarray(noise).save(truncated, format="JPEG")
        data = truncated.read_bytes()
        truncated.write_bytes(data[: len(data) // 2])  # no end marker: Pillow decodes
        with pytest.raises(SampleError, match="over the limit"):
            read_image(truncated)
        with pytest.raises(SampleError, match="over the limit"):
            read_png(f)  # label maps too
    assert read_image(f).shape == (40, 30, 3)  # the default limit


# -- only regular files, only inside the source ------------------------------------------


def test_a_fifo_is_skipped_unread(dtd_copy: Path, tmp_path: Path) -> None:
    image = dtd_copy / "images" / BANDED
    image.unlink()
    os.mkfifo(image)  # no writer: a blocking open would hang the build forever
    got = skipped(dtd_config(dtd_copy), tmp_path / "s.zarr")
    assert got == {BANDED: f"{image}: a FIFO (named pipe), not a file; not read"}


def test_a_fifo_as_the_index_is_one_error_line(dtd_copy: Path, tmp_path: Path) -> None:
    index = dtd_copy / "labels" / "labels_joint_anno.txt"
    index.unlink()
    os.mkfifo(index)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(dtd_config(dtd_copy)))
    r = runner.invoke(app, ["build", str(cfg), "--out", str(tmp_path / "s.zarr"), "-q"])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output
    assert str(index) in lines[0] and "FIFO" in lines[0]


def test_a_link_outside_the_source_is_refused_unless_allowed(
    dtd_copy: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.jpg"
    image = dtd_copy / "images" / BANDED
    outside.write_bytes(image.read_bytes())
    image.unlink()
    image.symlink_to(outside)
    inside = dtd_copy / "images" / "banded" / "banded_0002.jpg"
    (dtd_copy / "copy.jpg").write_bytes(inside.read_bytes())
    inside.unlink()
    inside.symlink_to(dtd_copy / "copy.jpg")  # a link that stays inside is fine
    got = skipped(dtd_config(dtd_copy), tmp_path / "a.zarr")
    assert list(got) == [BANDED]
    assert f"a symbolic link to {outside}, outside the source's folders" in got[BANDED]
    assert skipped(dtd_config(dtd_copy, allow_outside_links=True), tmp_path / "b.zarr") == {}


def test_an_index_line_that_climbs_out_of_the_source_is_refused(
    dtd_copy: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret" / "x.jpg"
    secret.parent.mkdir()
    secret.write_bytes((dtd_copy / "images" / BANDED).read_bytes())
    index = dtd_copy / "labels" / "labels_joint_anno.txt"
    rel = "../../secret/x.jpg"  # images/../../secret: beside the source folder
    index.write_text(index.read_text() + f"{rel} banded\n")
    got = skipped(dtd_config(dtd_copy), tmp_path / "s.zarr")
    assert list(got) == [rel]
    assert f"a path to {secret}, outside the source's folders" in got[rel]


def test_devices_and_folders_are_not_read(tmp_path: Path) -> None:
    with pytest.raises(SampleError, match="a character device, not a file; not read"):
        read_regular(Path("/dev/zero"))  # would never end
    with pytest.raises(SampleError, match="cannot read"):
        read_regular(tmp_path)


# -- COCO geometry before pycocotools ---------------------------------------------------------


def _coco_with(tmp_path: Path, segmentation: Any, **image: Any) -> COCO:
    doc = instances_doc()
    doc["annotations"][0]["segmentation"] = segmentation
    doc["images"][0].update(image)
    images, ann = write_instances(tmp_path, doc)
    ann.write_text(json.dumps(doc))  # NaN as json.dumps writes it
    return COCO.from_config({"images": str(images), "annotations": str(ann)})


GEOMETRY = {
    "polygon at 2e9": ([[2e9, 5, 2e9 + 10, 5, 2e9, 20]], "x coordinate is far outside"),
    "polygon of 1e300": ([[1e300, 5, 10, 5, 10, 20]], "x coordinate is far outside"),
    "NaN coordinate": ([[float("nan"), 5, 10, 5, 10, 20]], "not a finite number"),
    "integer beyond float64": ([[10**400, 5, 10, 5, 10, 20]], "out of range"),
    "outline winding 100 times": (
        [[0, 0, 40, 40] * 100 + [0, 40]], "outline is 8040 pixels long"
    ),
    "RLE count of 1e30": ({"counts": [10**30, 5], "size": [40, 50]}, "counts outside"),
    "RLE count of 2**64": ({"counts": [0, 2**64], "size": [40, 50]}, "counts outside"),
    "RLE of 2**40 pixels": ({"counts": [1], "size": [2**20, 2**20]}, "beyond 2**32"),
    "RLE string of huge runs": (
        {"counts": "0" + "o" * 10 + "0" + "o" * 10 + "0", "size": [40, 50]}, None
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(GEOMETRY))
def test_hostile_coco_geometry_is_a_listed_skip(case: str, tmp_path: Path) -> None:
    seg, why = GEOMETRY[case]
    coco = _coco_with(tmp_path, seg)
    coco.vocabulary()
    with pytest.raises(SampleError) as e:
        coco.load(0)
    assert "annotation 11 of image 1" in str(e.value)
    assert why is None or why in str(e.value), str(e.value)
    coco.load(1)  # the other images read


def test_a_declared_height_of_1e9_is_a_size_mismatch(tmp_path: Path) -> None:
    coco = _coco_with(tmp_path, [[2, 2, 20, 2, 20, 20]], height=10**9)
    with pytest.raises(SampleError, match="says 50×1000000000"):
        coco.load(0)


def test_a_list_as_image_id_is_one_source_error(tmp_path: Path) -> None:
    doc = instances_doc()
    doc["annotations"][0]["image_id"] = [1, {"a": 2}]
    images, ann = write_instances(tmp_path, doc)
    coco = COCO.from_config({"images": str(images), "annotations": str(ann)})
    with pytest.raises(SourceError, match=r"refer to image ids not in `images` \(e.g. \[1, "):
        coco.vocabulary()


def test_sane_geometry_still_reads() -> None:
    """Outlines that overshoot the image a little, as real annotations do, pass."""
    got = compact_segmentation([[-0.5, -0.5, 50.5, -0.5, 50.5, 40.5]], 40, 50)
    assert got is not None and got[0] == "polygons"
    assert compact_segmentation({"counts": [0, 2000], "size": [40, 50]}, 40, 50) is not None
