"""What the build and store benchmarks share: the real fixture photos, the files each
sample is decoded from (for the decoding baseline), timing helpers, and an adapter that
replicates a source to any number of samples (for builds of a few hundred images)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broden.adapters import Adapter, Kind, SourceSample

REPO = Path(__file__).resolve().parent.parent
S = 224


def common_args(ap: argparse.ArgumentParser) -> None:
    from bench.results_file import RESULTS

    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="the results file whose section this script writes")  # fmt: skip
    ap.add_argument("--work", type=Path, default=REPO / ".bench",
                    help="folder for the stores this benchmark writes")  # fmt: skip


def sized_args(
    doc: str, images: int, quick_images: int, repeat: int, what: str
) -> argparse.Namespace:
    """The arguments of a benchmark over ``--images`` replicated samples (``what`` they
    are), timed best of ``--repeat``; ``--quick`` caps both. The work folder exists."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    common_args(ap)
    ap.add_argument("--images", type=int, default=images, help=what)
    ap.add_argument("--repeat", type=int, default=repeat, help="timings are the best of this many")
    args = ap.parse_args()
    if args.quick:
        args.images, args.repeat = min(args.images, quick_images), 1
    args.work.mkdir(parents=True, exist_ok=True)
    return args


def available_sources() -> list[dict[str, Any]]:
    """Config entries for the real-photo sources bundled in the repository."""
    from broden.adapters import available_adapters

    data = REPO / "tests" / "data"
    found: list[dict[str, Any]] = [
        {"adapter": "ade20k", "root": str(REPO / "samples/ade20k/ADE20K_2021_17_01")}
    ]
    adapters = available_adapters()
    if "ade20k_sceneparsing" in adapters and (data / "ade20k_sceneparsing").exists():
        root = next((data / "ade20k_sceneparsing").glob("ADEChallengeData2016"), None)
        if root is not None:
            found.append(
                {"adapter": "ade20k_sceneparsing", "root": str(root), "splits": ["validation"]}
            )
    if "pascal" in adapters and (data / "pascal_part").exists():
        found.append(
            {
                "adapter": "pascal",
                "images": str(data / "pascal_part" / "VOCdevkit" / "VOC2010" / "JPEGImages"),
                "parts": str(data / "pascal_part"),
            }
        )
    return found


def source_files(adapter: Adapter, index: int) -> list[Path]:
    """The files a sample is decoded from (for the baseline)."""
    if isinstance(adapter, Cycled):
        return source_files(adapter.inner, index % len(adapter.inner))
    sid = adapter.source_id(index)
    name = adapter.name
    opts: Any = adapter.options
    if name == "ade20k":
        jpg = opts.root / sid
        stem = str(jpg)[:-4]
        files = [jpg, Path(stem + "_seg.png")]
        k = 1
        while Path(f"{stem}_parts_{k}.png").exists():
            files.append(Path(f"{stem}_parts_{k}.png"))
            k += 1
        return files
    if name == "ade20k_sceneparsing":
        jpg = opts.root / sid
        ann = Path(str(jpg).replace("/images/", "/annotations/"))
        return [jpg, ann.with_suffix(".png")]
    if name == "pascal":
        stem = Path(sid).stem
        files = [opts.images / f"{stem}.jpg"]
        if opts.parts is not None:
            files.append(opts.parts / "Annotations_Part" / f"{stem}.mat")
        return files
    raise ValueError(name)


def decode_baseline(files: list[Path]) -> None:
    """Decode a sample's source files: JPEG/PNG with OpenCV, .mat with scipy."""
    import cv2
    import scipy.io

    for f in files:
        if f.suffix == ".mat":
            scipy.io.loadmat(f)
        else:
            flags = cv2.IMREAD_COLOR if f.suffix == ".jpg" else cv2.IMREAD_UNCHANGED
            assert cv2.imread(str(f), flags) is not None, f


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def best_of(fn: Callable[[], object], reps: int = 3) -> float:
    """The shortest of ``reps`` timed calls, in seconds (other processes share the CPUs)."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


class Cycled(Adapter):
    """``inner`` replicated to ``n`` samples: sample i is inner sample ``i % len(inner)``
    under the id ``"<inner id>#<copy>"``. Everything else (vocabulary, categories,
    provenance) is the inner adapter's, so a build does the same work per sample."""

    name = "cycled"
    kinds: dict[str, Kind] = {}

    def __init__(self, inner: Adapter, n: int):
        self.inner = inner
        self.n = n
        self.options = inner.options
        self._requested = None

    def supplied_kinds(self) -> dict[str, Kind]:
        return {c: self.inner.kind(c) for c in self.inner.categories}

    def check(self) -> None:
        self.inner.check()

    def vocabulary(self) -> dict[str, dict[int, list[str]]]:
        return self.inner.vocabulary()

    def __len__(self) -> int:
        return self.n

    def source_id(self, index: int) -> str:
        m = len(self.inner)
        return f"{self.inner.source_id(index % m)}#{index // m}"

    def load(self, index: int) -> SourceSample:
        sample = self.inner.load(index % len(self.inner))
        sample.source_id = self.source_id(index)
        return sample

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


def replicated_adapters(config: Any, n: int) -> list[tuple[str, Adapter]]:
    """The config's sources replicated to ``n`` samples in all, each source keeping its
    share of the fixture's samples (so the mix of image sizes is the fixture's)."""
    from broden.config import make_adapters

    adapters = make_adapters(config)
    sizes = [len(a) for _, a in adapters]
    total = sum(sizes)
    counts = [n * s // total for s in sizes]
    for i in range(n - sum(counts)):
        counts[i % len(counts)] += 1
    return [(name, Cycled(a, c)) for (name, a), c in zip(adapters, counts, strict=True)]
