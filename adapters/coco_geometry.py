"""COCO segmentations checked before pycocotools sees them.

pycocotools is C code: a polygon coordinate of 1e9 makes ``frPyObjects`` allocate without
bound and then crash the process, an RLE count of 2**64 overflows, and a run-length string
that falls short of H·W leaves the mask uninitialised. A crash in C code kills the build
worker and every rerun, so every segmentation is validated here, in Python, and one that
fails makes its image a listed skip with the reason:

- **polygons**: flat lists of an even number of finite numbers, at most
  :data:`MAX_POLYGON_VALUES` of them; every x within ``[-W, 2W]`` and every y within
  ``[-H, 2H]`` (one image size around the image: real outlines overshoot by a pixel or
  two); the outline no longer than :data:`PERIMETER_FACTOR` ``× (H + W)`` (pycocotools
  rasterises an outline point by point, so its work and memory grow with the length);
- **uncompressed RLE**: ``size`` two positive integers with ``H·W < 2**32`` (pycocotools
  counts in 32 bits), ``counts`` integers in ``[0, H·W]``;
- **compressed RLE**: an ASCII string of the RLE alphabet (:func:`rle_string_counts`);
  its runs are checked against the image at decoding time.

Sizes are checked against the image size the json declares; at decoding time the
decoded image must have that size and an RLE's size must equal it.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

SegKind = Literal["polygons", "rle", "string"]

#: numbers in one polygon: 1M points is beyond any hand-drawn or traced outline
MAX_POLYGON_VALUES = 2_000_000
#: an outline may be at most this many times the image's half-perimeter (H + W) long
PERIMETER_FACTOR = 64
#: pycocotools' counts and sizes are 32-bit unsigned
MAX_RLE_PIXELS = 2**32 - 1


def rle_string_counts(counts: bytes) -> np.ndarray:
    """Run lengths of a compressed COCO RLE string (the inverse of pycocotools' encoding).

    pycocotools decodes a string whose runs fall short of H·W without complaint and
    leaves the rest of the mask uninitialised; checking the sum here prevents that.
    Raises ValueError for characters outside the alphabet or a truncated value.
    """
    c = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64)
    if c.min() < 0 or c.max() > 63:
        raise ValueError("characters outside the RLE alphabet")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("the string ends inside a run length")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 11:
        raise ValueError("a run length longer than 55 bits")
    k = np.arange(c.size) - np.repeat(starts, lengths)
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    negative = (c[ends] & 0x10) != 0
    x = np.where(negative, x - (np.int64(1) << (5 * lengths)), x)
    # from the third value on, each is a difference to the value two places before
    x[2::2] = np.cumsum(x[2::2])
    x[1::2] = np.cumsum(x[1::2])
    return x


def check_runs(runs: np.ndarray, h: int, w: int) -> str | None:
    """Why run lengths ``runs`` are not a mask of ``h × w`` (None when they are)."""
    if runs.size and (runs.min() < 0 or runs.max() > h * w):
        return f"RLE run lengths outside [0, {h}×{w}]"
    total = int(runs.sum(dtype=np.int64))
    if total != h * w:
        return f"RLE run lengths add up to {total}, not {h}×{w}"
    return None


def _polygon(poly: Any, height: int, width: int) -> np.ndarray:
    """One polygon as float64 coordinates, checked (ValueError with the reason)."""
    if not isinstance(poly, list) or len(poly) > MAX_POLYGON_VALUES:
        too_long = isinstance(poly, list)
        raise ValueError(
            f"a polygon has more than {MAX_POLYGON_VALUES:,} coordinates"
            if too_long
            else "a polygon is not a flat list of numbers [x1, y1, x2, y2, ...]"
        )
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in poly):
        raise ValueError("a polygon is not a flat list of numbers [x1, y1, x2, y2, ...]")
    try:
        coords = np.asarray(poly, np.float64)
    except (OverflowError, ValueError):  # an integer beyond float64
        raise ValueError("a polygon coordinate is out of range") from None
    if coords.ndim != 1 or not np.isfinite(coords).all():
        raise ValueError("a polygon has a coordinate that is not a finite number")
    if coords.size % 2:
        raise ValueError(f"a polygon has an odd number of coordinates ({coords.size})")
    x, y = coords[0::2], coords[1::2]
    if x.size and (x.min() < -width or x.max() > 2 * width):
        raise ValueError(f"a polygon x coordinate is far outside the {width}-pixel-wide image")
    if y.size and (y.min() < -height or y.max() > 2 * height):
        raise ValueError(f"a polygon y coordinate is far outside the {height}-pixel-high image")
    if x.size >= 3:
        dx = np.abs(np.diff(x, append=x[:1]))
        dy = np.abs(np.diff(y, append=y[:1]))
        length = float(np.maximum(dx, dy).sum())
        if length > PERIMETER_FACTOR * (height + width):
            raise ValueError(
                f"a polygon's outline is {length:.0f} pixels long, more than "
                f"{PERIMETER_FACTOR}×(H+W) of its {width}×{height} image"
            )
    return coords


def _rle(seg: dict[str, Any]) -> tuple[SegKind, Any, tuple[int, int]]:
    size = seg["size"]
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(f"RLE size {size!r:.60} is not [height, width]")
    hw = (int(size[0]), int(size[1]))
    if hw[0] * hw[1] > MAX_RLE_PIXELS:
        raise ValueError(f"RLE size {hw[1]}×{hw[0]} is beyond 2**32 pixels")
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            raise ValueError("uncompressed RLE counts are not all integers")
        if counts and not 0 <= min(counts) <= max(counts) <= hw[0] * hw[1]:
            raise ValueError(f"uncompressed RLE counts outside [0, {hw[0]}×{hw[1]}]")
        return "rle", np.asarray(counts, np.uint32), hw
    if isinstance(counts, bytes):
        return "string", counts, hw
    if isinstance(counts, str):
        try:
            return "string", counts.encode("ascii"), hw
        except UnicodeEncodeError:
            raise ValueError("the RLE counts string is not ASCII") from None
    raise ValueError(f"RLE counts of type {type(counts).__name__}")


def compact_segmentation(
    seg: Any, height: int, width: int
) -> tuple[SegKind, Any, tuple[int, int] | None] | None:
    """The segmentation of an annotation on a ``width × height`` image in compact form
    (kind, data, the RLE's (h, w)); None when it has no pixels (an empty list, or only
    polygons of fewer than 3 points). Raises ValueError with the reason for anything
    pycocotools would misread or choke on (see the module docstring)."""
    if seg is None or (isinstance(seg, list) and not seg):
        return None
    if isinstance(seg, list):
        polys = tuple(_polygon(p, height, width) for p in seg)
        kept = tuple(c for c in polys if c.size >= 6)  # fewer than 3 points: no pixel
        return ("polygons", kept, None) if kept else None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        return _rle(seg)
    raise ValueError(f"unsupported segmentation of type {type(seg).__name__}")
