# ruff: noqa: E402  (imports follow the sys.path fix below)
"""Build throughput on the real fixture photos, against baselines measured in the same run.

Prints, and writes to its section of ``bench/RESULTS.md``:

- **per worker**: images/s of the build's per-sample work at S=224 (decode the source
  files, count label statistics and colors at source resolution, resize the image,
  sample the label maps), per source; next to the **baseline** of decoding the same
  source JPEG/PNG files with OpenCV (and .mat files with scipy).
- **scaling**: complete builds (plan, prepare, unify, write, finalize) of the fixture's
  sources replicated to a few hundred samples (each source cycled, keeping its share of
  the samples) with ``workers=1`` (the baseline), ``workers=2`` and ``dask="local:2"``:
  wall time, images/s and speed-up over one worker (target ≥ 1.7× for two).

    .venv/bin/python bench/build.py [--images 384] [--repeat 2] [--quick] [--results PATH]

The store read benchmark is ``bench/store.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# keep this folder off the import path (its files are named like modules: build, store, ...)
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_here.parent))

import shutil
import statistics
import time
from typing import Any

from bench.common import (
    S,
    available_sources,
    best_of,
    decode_baseline,
    rate,
    replicated_adapters,
    sized_args,
    source_files,
)
from bench.results_file import Run, load_average, md_table, write_section

SHARD = 64  # scaling builds: several shards per worker, as in a real store


def bench_per_worker(entries: list[dict[str, Any]], reps: int) -> str:
    from broden.build import make_plan, prepare_sample
    from broden.config import parse_config

    cfg = parse_config({"image_size": S, "min_frequency": 1, "min_coverage": 0, "sources": entries})
    plan = make_plan(cfg)
    rows = []
    total_b = total_d = 0.0
    total_n = 0
    for src in plan.sources:
        n = len(src.adapter)
        sizes: list[int] = []

        def run_build(src: Any = src, n: int = n, sizes: list[int] = sizes) -> None:
            sizes.clear()
            for i in range(n):
                p = prepare_sample(src, i, S, S // 2)
                sizes.append(p.orig_size[0] * p.orig_size[1])

        files = [source_files(src.adapter, i) for i in range(n)]
        run_build()  # warm up (imports, caches)
        tb = best_of(run_build, reps)
        td = best_of(lambda files=files: [decode_baseline(f) for f in files], reps)
        total_b, total_d, total_n = total_b + tb, total_d + td, total_n + n
        mp = statistics.mean(sizes) / 1e6
        rows.append(
            [
                src.name,
                n,
                f"{mp:.2f} MP",
                f"{rate(n, tb):.1f}",
                f"{rate(n, td):.1f}",
                f"{tb / td:.2f}×",
            ]
        )
    rows.append(
        [
            "all",
            total_n,
            "",
            f"{rate(total_n, total_b):.1f}",
            f"{rate(total_n, total_d):.1f}",
            f"{total_b / total_d:.2f}×",
        ]
    )
    return (
        f"Per worker at S = {S} (one process, best of {reps}): the build's per-sample work "
        "(`prepare_sample`: decode, statistics and colors at source resolution, resize, "
        "label sampling) against the baseline of only decoding the same source files "
        "(OpenCV; scipy for .mat).\n\n"
        + md_table(
            [
                "source",
                "images",
                "mean size",
                "build img/s",
                "baseline: decode-only img/s",
                "build time / decode time",
            ],
            rows,
        )
    )


def bench_scaling(
    entries: list[dict[str, Any]], n: int, reps: int, work: Path, cluster_alone: bool = True
) -> str:
    from broden.build import build, staging_path
    from broden.config import parse_config

    cfg = parse_config(
        {
            "image_size": S,
            "min_frequency": 1,
            "min_coverage": 0,
            "shard_size": SHARD,
            "sources": entries,
        }
    )
    adapters = replicated_adapters(cfg, n)
    runs: list[tuple[str, dict[str, Any]]] = [
        ("workers=1 (baseline)", {"workers": 1}),
        ("workers=2", {"workers": 2}),
    ]
    try:
        import distributed  # noqa: F401

        runs.append(('dask="local:2"', {"dask": "local:2"}))
    except ImportError:
        print("dask.distributed is not installed: no Dask row")
    out = work / "bench-scaling.zarr"
    times: dict[str, list[float]] = {label: [] for label, _ in runs}
    images = 0
    load_before = load_average()
    for _ in range(reps):  # interleaved, so that a busy spell of the machine hits all rows
        for label, kw in runs:
            for p in (out, staging_path(out)):
                if p.exists():
                    shutil.rmtree(p)
            t = time.perf_counter()
            summary = build(cfg, out, progress=False, adapters=adapters, **kw)
            times[label].append(time.perf_counter() - t)
            images = summary.images
            print(f"  {label}: {times[label][-1]:.2f} s", flush=True)
    load_after = load_average()
    results = [(label, min(ts)) for label, ts in times.items()]
    shutil.rmtree(out, ignore_errors=True)
    base = results[0][1]
    rows = [
        [label, images, f"{t:.2f}", f"{rate(images, t):.1f}", f"{base / t:.2f}×"]
        for label, t in results
    ]
    extra = ""
    if cluster_alone and any("dask" in kw for _, kw in runs):
        from dask.distributed import Client, LocalCluster

        t = time.perf_counter()
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster):  # fmt: skip
            pass
        extra = (
            f"\n\nStarting and closing the 2-worker Dask LocalCluster alone takes "
            f"{time.perf_counter() - t:.1f} s of the Dask row's wall time."
        )
    per_source = ", ".join(f"{name} {len(a)}" for name, a in adapters)
    return (
        f"Scaling: complete builds (plan, prepare, unify, write, finalize; S = {S}, shards of "
        f"{SHARD}, tasks of {cfg.task_size} samples) of the fixture's real photos replicated "
        f"to {images} samples ({per_source}), best of {reps}; the baseline is the same build "
        "with one worker, the rows run interleaved. Target: ≥ 1.7× with two workers. Load "
        f"average (1, 5, 15 min) before / after: {load_before} / {load_after}.\n\n"
        + md_table(["runner", "images", "wall time s", "img/s", "speed-up vs 1 worker"], rows)
        + extra
    )


def main() -> None:
    args = sized_args(__doc__, 384, 17, 2, "samples of the scaling builds")
    run = Run()
    entries = available_sources()
    print("sources:", ", ".join(e["adapter"] for e in entries), flush=True)
    per_worker = bench_per_worker(entries, 1 if args.quick else 3)
    print(per_worker, "\n", flush=True)
    scaling = bench_scaling(entries, args.images, args.repeat, args.work, not args.quick)
    print(scaling, flush=True)
    body = "\n\n".join(["## Build (`bench/build.py`)", run.preamble(), per_worker, scaling])
    print("wrote", write_section("build", body, args.results))


if __name__ == "__main__":
    main()
