"""Resizing and color naming as Broden did them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import zoom

from broden.adapters.colors import COLOR_NAMES, color_counts, color_labels, color_table
from broden.imaging import label_grid, nearest_indices, resize_image, sample_labels


@pytest.mark.parametrize("n_in,n_out", [(375, 112), (500, 112), (1536, 113), (2048, 192), (7, 3)])
def test_label_sampling_matches_scipy_zoom_order_0(n_in: int, n_out: int) -> None:
    a = np.arange(1, n_in * 3 + 1).reshape(n_in, 3)
    z = zoom(a, (n_out / n_in, 1), order=0)
    ours = a[nearest_indices(n_in, n_out)]
    # zoom loses the last row to 0 where its float coordinate overshoots; we clamp instead
    ok = z[:, 0] != 0
    assert np.array_equal(ours[ok], z[ok])
    assert ok[:-1].all()


def test_label_sampling_clamps_where_zoom_drops_the_last_row() -> None:
    # (801 -> 152) is a case where zoom's coordinate for the last row exceeds 800
    a = np.arange(1, 802)[:, None].repeat(2, 1)
    assert zoom(a, (152 / 801, 1), order=0)[-1, 0] == 0
    assert a[nearest_indices(801, 152)][-1, 0] == 801


def test_sample_labels_takes_every_layer_at_the_grid() -> None:
    labels = np.stack([np.arange(12).reshape(3, 4), 100 + np.arange(12).reshape(3, 4)])
    rows, cols = label_grid((3, 4), 2)
    assert rows.tolist() == [0, 2] and cols.tolist() == [0, 3]
    assert sample_labels(labels, rows, cols).tolist() == [
        [[0, 3], [8, 11]],
        [[100, 103], [108, 111]],
    ]


def test_resize_is_pillow_bilinear_with_antialiasing() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    out = resize_image(image, 64)
    expected = np.asarray(Image.fromarray(image).resize((64, 64), Image.Resampling.BILINEAR))
    assert out.shape == (64, 64, 3) and np.array_equal(out, expected)
    # antialiasing: a fine checkerboard averages to grey instead of aliasing
    checker = ((np.indices((256, 256)).sum(0) % 2) * 255).astype(np.uint8)
    small = resize_image(np.stack([checker] * 3, -1), 32)
    assert np.abs(small.astype(int) - 127).max() <= 2


def test_color_table_checks_from_the_release() -> None:
    table = color_table()
    name = {rgb: COLOR_NAMES[table[rgb[0] // 8, rgb[1] // 8, rgb[2] // 8]] for rgb in [
        (255, 0, 0), (0, 0, 255), (0, 255, 0), (0, 0, 0), (255, 255, 255),
        (128, 128, 128), (255, 128, 0), (128, 0, 128),
    ]}  # fmt: skip
    assert list(name.values()) == [
        "red", "blue", "green", "black", "white", "grey", "orange", "purple",
    ]  # fmt: skip
    bins = np.bincount(table.ravel(), minlength=11)
    assert dict(zip(COLOR_NAMES, bins.tolist(), strict=True)) == {
        "black": 194, "blue": 6071, "brown": 743, "grey": 293, "green": 9573, "orange": 1698,
        "pink": 2748, "purple": 6749, "red": 1725, "white": 209, "yellow": 2765,
    }  # fmt: skip


def test_color_counts_and_labels_agree_with_a_per_pixel_lookup() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    per_pixel = color_table()[image[..., 0] // 8, image[..., 1] // 8, image[..., 2] // 8] + 1
    counts = color_counts(image)
    assert counts[0] == 0 and counts.sum() == 37 * 53
    assert counts.tolist() == np.bincount(per_pixel.ravel(), minlength=12).tolist()
    rows, cols = np.array([0, 5, 36]), np.array([1, 52])
    assert np.array_equal(color_labels(image, rows, cols), per_pixel[np.ix_(rows, cols)])
