"""Generate the small DTD-format sample shipped in samples/dtd (deterministic).

DTD's images could not be bundled (no redistribution grant), so this draws
procedural textures of six DTD classes in DTD's exact on-disk layout:
``images/<class>/<class>_NNNN.jpg``, ``labels/labels_joint_anno.txt`` (path, then
the key attribute and any further ones) and the ``labels/{train,val,test}1.txt``
partition files. Some images carry two labels, as in DTD's joint annotation.

    python samples/make_dtd.py samples/dtd
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

RNG_SEED = 20170424  # the day broden1_224 was generated


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:h, 0:w].astype(np.float32)


def banded(rng, h, w):  # few broad bands
    y, x = _grid(h, w)
    period = rng.uniform(40, 70)
    band = (np.floor((y + 0.3 * x) / period) % 2).astype(bool)
    return band, rng.integers(0, 256, 3), rng.integers(0, 256, 3)


def striped(rng, h, w):  # many thin stripes
    y, x = _grid(h, w)
    angle = rng.uniform(0, np.pi)
    t = x * np.cos(angle) + y * np.sin(angle)
    return (np.sin(t / rng.uniform(2.5, 4.5)) > 0), rng.integers(0, 256, 3), rng.integers(0, 256, 3)


def chequered(rng, h, w):
    y, x = _grid(h, w)
    s = rng.uniform(12, 24)
    return ((np.floor(y / s) + np.floor(x / s)) % 2).astype(bool), (20, 20, 20), (235, 235, 235)


def dotted(rng, h, w):
    y, x = _grid(h, w)
    s = rng.uniform(10, 16)
    d = np.hypot((y % s) - s / 2, (x % s) - s / 2)
    return d < s / 5, rng.integers(0, 256, 3), rng.integers(0, 256, 3)


def zigzagged(rng, h, w):
    y, x = _grid(h, w)
    p = rng.uniform(14, 24)
    tri = np.abs((x % p) - p / 2)
    return (
        (np.floor((y + tri) / (p / 2)) % 2).astype(bool),
        rng.integers(0, 256, 3),
        (250, 250, 240),
    )


def grid(rng, h, w):
    y, x = _grid(h, w)
    s = rng.uniform(14, 22)
    return ((y % s) < 2) | ((x % s) < 2), (30, 30, 30), rng.integers(150, 256, 3)


CLASSES = {
    "banded": banded,
    "chequered": chequered,
    "dotted": dotted,
    "grid": grid,
    "striped": striped,
    "zigzagged": zigzagged,
}
# second labels of the joint annotation, as DTD lists them for look-alike images
EXTRA = {("chequered", 2): "grid", ("dotted", 1): "polka-dotted", ("striped", 3): "banded"}


def render(name: str, rng: np.random.Generator) -> np.ndarray:
    h, w = int(rng.integers(140, 200)), int(rng.integers(140, 200))
    mask, fg, bg = CLASSES[name](rng, h, w)
    img = np.where(mask[..., None], np.asarray(fg, np.float32), np.asarray(bg, np.float32))
    img += rng.normal(0, 6, img.shape)  # sensor-like noise
    return np.clip(img, 0, 255).astype(np.uint8)


def main(out: Path, per_class: int = 4) -> None:
    rng = np.random.default_rng(RNG_SEED)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    joint, parts = [], {"train1": [], "val1": [], "test1": []}
    for name in CLASSES:
        (out / "images" / name).mkdir(parents=True, exist_ok=True)
        for k in range(1, per_class + 1):
            rel = f"{name}/{name}_{k:04d}.jpg"
            Image.fromarray(render(name, rng)).save(out / "images" / rel, quality=90)
            labels = [name] + ([EXTRA[(name, k)]] if (name, k) in EXTRA else [])
            joint.append(f"{rel} {' '.join(labels)}")
            parts[("train1", "val1", "test1", "train1")[(k - 1) % 4]].append(rel)
    (out / "labels" / "labels_joint_anno.txt").write_text("\n".join(joint) + "\n")
    for split, rels in parts.items():
        (out / "labels" / f"{split}.txt").write_text("\n".join(rels) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "dtd"))
