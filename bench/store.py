# ruff: noqa: E402  (imports follow the sys.path fix below)
"""Store read throughput against decoding the source files, measured in the same run.

Builds a store from the real fixture photos (S=224), replicates it to ``--images`` copies
(same content, same codecs and shard layout as a build writes), and reads every image
with all its label layers:

- one image per call in random order, one process (``BrodenStore.sample``);
- shard-aligned blocks, one process (``BrodenStore.read_block``);
- a torch DataLoader with 2 worker processes (one image per item, batches of 32,
  shuffled; the steady state of persistent workers, worker start-up not counted);

next to the **baseline** of decoding the same images' source files (OpenCV JPEG/PNG,
scipy .mat) one after another in one process, and through the same 2-worker DataLoader.

Then the cost of **verified reads** (:mod:`broden.store.verified`: each shard checked
against its recorded XXH3 digest the first time it is read) on a store of Broden's
shape (:func:`broden.dissect.synthetic.random_store`: images at 224, color, object, two
part layers and material at 112, scene and texture labels, 1,038 concepts): every shard
of every array read with and without the check, shard-aligned and through the
dissection's own batches (``StoreBatches``, 0 and 2 workers); the baseline is the same
read unverified, in the same run. Prints the tables and writes its section of
``bench/RESULTS.md``.

    .venv/bin/python bench/store.py [--images 512] [--repeat 3] [--quick] [--results PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path

# keep this folder off the import path (its files are named like modules: build, store, ...)
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_here.parent))

import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np

from bench.common import S, available_sources, best_of, decode_baseline, rate, sized_args
from bench.common import source_files as sample_files
from bench.results_file import Run, md_table, write_section

SHARD = 64
BATCH = 32


def replicate(src: Path, dst: Path, n: int) -> None:
    """A store of n images made of copies of src's images (same content, same codecs)."""
    from broden.store import Block, open_store, write_store

    store = open_store(src)
    blk = store.read_block(0, len(store))
    if dst.exists():
        shutil.rmtree(dst)
    attrs = store.attrs.model_copy(update={"images": n, "shard_size": SHARD})

    def parts() -> Iterator[Block]:
        for start in range(0, n, SHARD):
            idx = np.arange(start, min(start + SHARD, n)) % len(store)
            yield Block(
                images=blk.images[idx],
                pixel={c: a[idx] for c, a in blk.pixel.items()},
                image_labels={c: a[idx] for c, a in blk.image_labels.items()},
                source=[blk.source[i] for i in idx],
                source_id=[f"{blk.source_id[i]}#{start + k}" for k, i in enumerate(idx)],
                split=[blk.split[i] for i in idx],
                orig_size=blk.orig_size[idx],
            )

    write_store(dst, attrs, store.concepts, parts())


class StoreDataset:
    """The minimal torch Dataset over a store: one image with all its label layers. The
    store is opened in each worker process on first use."""

    def __init__(self, path: Path, n: int):
        self.path = path
        self.n = n
        self.store: Any = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self.store is None:
            from broden.store import open_store

            self.store = open_store(self.path)
        s = self.store.sample(i)
        return s.image, {**s.pixel, **s.image_labels}


class DecodeDataset:
    """The baseline as a Dataset: item i decodes the source files of sample i % len."""

    def __init__(self, files: list[list[Path]], n: int):
        self.files = files
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        decode_baseline(self.files[i % len(self.files)])
        return i


def _keep(batch: list[Any]) -> list[Any]:
    return batch


def loader_rate(dataset: Any, reps: int) -> float:
    """Items/s of a 2-worker DataLoader over ``dataset``: the best of ``reps`` epochs after
    a first one that starts the (persistent) workers."""
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=2, shuffle=True,
                        collate_fn=_keep, persistent_workers=True)  # fmt: skip
    for _ in loader:  # start the workers
        pass
    t = best_of(lambda: [None for _ in loader], reps)
    return rate(len(dataset), t)


def verified_reads(work: Path, n: int, reps: int) -> str:
    """The verified-read table (see the module docstring) as markdown, with its text."""
    import torch
    import zarr

    from broden.dissect import DissectSettings, score_activations
    from broden.dissect.data import StoreBatches, iterate
    from broden.dissect.synthetic import random_store
    from broden.store import DIGESTS_ATTR, open_store, shard_digest
    from broden.store.layout import legacy_digest
    from broden.store.verified import ShardVerifier

    torch.set_num_threads(1)
    path = random_store(work / "bench-verified.zarr", n_images=n, shard_size=SHARD)
    store = open_store(path)
    names = store.array_names()
    cpu = torch.device("cpu")

    def blocks(verify: bool) -> None:
        store.checked_shards.clear()
        reads = ShardVerifier(store)
        for a, b in store.shards():
            reads.read_block(a, b, check=verify)

    def batches(verify: bool, workers: int) -> None:
        store.checked_shards.clear()
        for _ in iterate(StoreBatches(store, BATCH, verify=verify), workers, cpu):
            pass

    plain = work / "bench-unverified.zarr"  # the same store without digests: unverified
    shutil.rmtree(plain, ignore_errors=True)
    shutil.copytree(path, plain)
    for name in names:
        del zarr.open_array(str(plain / name), mode="r+").attrs[DIGESTS_ATTR]
    acts = np.random.default_rng(0).normal(size=(n, 512, 7, 7)).astype(np.float32)

    def dissection(verify: bool, workers: int) -> None:
        settings = DissectSettings(workers=workers, progress=False, force=True)
        score_activations(path if verify else plain, acts, "layer4", settings,
                          out=work / "bench-verified-out")  # fmt: skip

    data = {name: [store.rows(name, a, b) for a, b in store.shards()] for name in names}
    raw = sum(x.nbytes for parts in data.values() for x in parts)
    t_hash = best_of(lambda: [shard_digest(x) for parts in data.values() for x in parts], reps)
    t_blake = best_of(lambda: [legacy_digest(x) for parts in data.values() for x in parts], reps)
    rows, overheads = [], []
    for label, fn in (
        ("every shard, shard-aligned blocks (`read_block`), 1 process", blocks),
        (f"`StoreBatches` (batches of {BATCH}, labels → int32 + histograms), 0 workers",
         lambda v: batches(v, 0)),
        (f"`StoreBatches` (batches of {BATCH}), torch DataLoader, 2 workers",
         lambda v: batches(v, 2)),
        ("a dissection of activations (512 units at 7×7, both passes), 0 workers",
         lambda v: dissection(v, 0)),
        ("a dissection of activations (512 units at 7×7, both passes), 2 workers",
         lambda v: dissection(v, 2)),
    ):  # fmt: skip
        fn(True)  # warm: page cache, imports, worker start-up code paths
        t_plain, t_checked = float("inf"), float("inf")
        for _ in range(reps):  # interleaved, so both see the same load
            t_plain = min(t_plain, best_of(lambda fn=fn: fn(False), 1))
            t_checked = min(t_checked, best_of(lambda fn=fn: fn(True), 1))
        over = t_checked / t_plain - 1
        overheads.append(over)
        rows.append([label, f"{rate(n, t_plain):.0f}", f"{rate(n, t_checked):.0f}",
                     f"{over:+.1%}"])  # fmt: skip
    table = md_table(["read", "img/s unverified (baseline)", "img/s verified", "overhead"], rows)
    mb = raw / n / 1e6
    return (
        f"Verified reads: a store of Broden's shape ({n} images, shards of {SHARD}, "
        f"{len(names)} arrays, {mb:.2f} MB decoded per image), every shard read with and "
        f"without the digest check, best of {reps}, interleaved; the baseline is the same "
        "read unverified (for the dissections: the same store with its digests removed, "
        "which reads unverified). Target: under 5 % overhead.\n\n"
        + table
        + f"\n\nThe check itself (`shard_digest`, XXH3-128 over the decoded shard) runs at "
        f"{raw / t_hash / 1e6:.0f} MB/s on one core: {t_hash / n * 1e3:.2f} ms per image "
        f"(blake2b, which stores of earlier versions record and which this replaced, runs at "
        f"{raw / t_blake / 1e6:.0f} MB/s: {t_blake / n * 1e3:.2f} ms per image), "
        "against which the reads above spend their time decoding (zstd) and assembling "
        f"rows. Overhead of a whole dissection: {overheads[3]:+.1%} with 0 workers, "
        f"{overheads[4]:+.1%} with 2 (the check runs in the workers, beside the tally)."
    )


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    from broden.build import build, make_plan
    from broden.config import parse_config
    from broden.store import open_store

    args = sized_args(__doc__, 512, 64, 3, "images in the replicated store")
    run = Run()
    entries = available_sources()
    cfg = parse_config({"image_size": S, "min_frequency": 1, "min_coverage": 0, "sources": entries})
    built = args.work / "bench-store-base.zarr"
    build(cfg, built, progress=False, overwrite=True)
    n = args.images
    replicated = args.work / "bench-store.zarr"
    replicate(built, replicated, n)
    store = open_store(replicated)
    plan = make_plan(cfg)
    files = [sample_files(src.adapter, i) for src in plan.sources for i in range(len(src.adapter))]
    print(f"store of {n} copies of {len(files)} real photos; timing...", flush=True)

    order = np.random.default_rng(0).permutation(n)
    reps = args.repeat
    t_one = best_of(lambda: [store.sample(int(i)) for i in order], reps)
    t_block = best_of(lambda: [store.read_block(a, b) for a, b in store.shards()], reps)
    r_loader = loader_rate(StoreDataset(replicated, n), reps)
    t_decode = best_of(lambda: [decode_baseline(f) for f in files], reps)
    r_decode = rate(len(files), t_decode)
    n_dec = len(files) * (1 if args.quick else 4)
    r_decode_loader = loader_rate(DecodeDataset(files, n_dec), reps)

    rows = [
        ["store, one image per call, random order", "1", f"{rate(n, t_one):.0f}",
         f"{rate(n, t_one) / r_decode:.0f}×"],
        ["store, shard-aligned blocks", "1", f"{rate(n, t_block):.0f}",
         f"{rate(n, t_block) / r_decode:.0f}×"],
        [f"store, torch DataLoader (batches of {BATCH}, shuffled)", "2 workers",
         f"{r_loader:.0f}", f"{r_loader / r_decode_loader:.0f}×"],
        ["baseline: decode the source files, one after another", "1", f"{r_decode:.0f}", "1×"],
        [f"baseline: decode the source files, torch DataLoader (batches of {BATCH})",
         "2 workers", f"{r_decode_loader:.0f}", "1×"],
    ]  # fmt: skip
    src_bytes = sum(f.stat().st_size for fs in files for f in fs) / len(files)
    store_bytes = dir_bytes(replicated) / n
    table = md_table(["read", "processes", "img/s", "vs decoding the sources"], rows)
    text = (
        f"Images with all their label layers (S = {S}, labels {S // 2}) read from a store of "
        f"{n} copies of the {len(files)} real fixture photos (shards of {SHARD}), best of "
        f"{reps}; the baseline decodes the same images' source files (OpenCV JPEG/PNG, scipy "
        ".mat). DataLoader rows: the steady state of persistent workers (start-up not "
        "counted), compared with the decoding DataLoader.\n\n"
        + table
        + f"\n\nOn disk: {store_bytes / 1e3:.0f} kB per image in the store (image and all "
        f"label layers, compressed) against {src_bytes / 1e3:.0f} kB of source files per "
        "image (at source resolution)."
    )
    print(text, flush=True)
    shutil.rmtree(replicated, ignore_errors=True)
    verified = verified_reads(args.work, n, reps)
    print(verified, flush=True)
    for name in ("bench-verified.zarr", "bench-unverified.zarr", "bench-verified-out"):
        shutil.rmtree(args.work / name, ignore_errors=True)
    body = "\n\n".join(["## Reading a store (`bench/store.py`)", run.preamble(), text, verified])
    print("wrote", write_section("store", body, args.results))


if __name__ == "__main__":
    main()
