"""``bench/RESULTS.md``: each benchmark script writes its own section of it.

A section lies between the markers ``<!-- bench:NAME:begin -->`` and
``<!-- bench:NAME:end -->``; :func:`write_section` replaces it (or adds it, in the order of
:data:`ORDER`) and leaves the other sections as they are. The file's header describes the
machine of the latest write (CPU model, cores, RAM, GPU, library versions, date); each
section repeats the date, machine and load average of its own run, since sections may be
measured at different times.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
#: section order in the file (``make bench`` order); unknown names go after these
ORDER = ("build", "store", "codecs", "dissect")
TITLE = "# Benchmark results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def gpu() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            return ", ".join(torch.cuda.get_device_name(i) for i in range(n))
    except Exception:  # no torch, or a broken CUDA set-up: the header says none
        pass
    return "none"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {platform.python_version()}"]
    for pkg in ("torch", "zarr", "numpy", "dask"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{pkg} {version(pkg)}")
    return ", ".join(parts)


def machine_line() -> str:
    ram = ram_gib()
    mem = f"{ram:.0f} GiB RAM" if ram is not None else "RAM unknown"
    return f"{cpu_model()}, {usable_cores()} cores, {mem}, GPU: {gpu()}"


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


class Run:
    """Started at the beginning of a script: its date, command line and load average."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.load = load_average()
        argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else []
        self.command = " ".join(["python", f"bench/{argv[0]}", *argv[1:]]) if argv else ""

    def preamble(self) -> str:
        took = time.perf_counter() - self.t0
        return (
            f"Measured {self.date} with `{self.command}` ({took:.0f} s) on {machine_line()}; "
            f"{versions()}. Load average (1, 5, 15 min) when the run started: {self.load} "
            "(other processes may share the CPUs)."
        )


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: int = 1) -> str:
    """A Markdown table; columns from ``right`` on are right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        pairs = enumerate(zip(r, widths, strict=True))
        out = [c.rjust(w) if i >= right else c.ljust(w) for i, (c, w) in pairs]
        return "| " + " | ".join(out) + " |"

    rule = [("-" * (w - 1) + ":") if i >= right else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(cells[0]), "| " + " | ".join(rule) + " |", *map(line, cells[1:])])


def header() -> str:
    ram = ram_gib()
    return "\n".join(
        [
            TITLE,
            "",
            "Written by the scripts in `bench/` (`make bench` runs them all); each script "
            "replaces its own section between its markers. Do not edit by hand: rerun the "
            "script.",
            "",
            f"Machine of the latest write ({datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}):",
            "",
            f"- CPU: {cpu_model()}, {usable_cores()} usable cores ({os.cpu_count()} online)",
            f"- RAM: {ram:.1f} GiB" if ram is not None else "- RAM: unknown",
            f"- GPU: {gpu()}",
            f"- {versions()}",
            f"- OS: {platform.platform()}",
            "",
        ]
    )


def _marker(name: str, end: bool) -> str:
    return f"<!-- bench:{name}:{'end' if end else 'begin'} -->"


def _sections(text: str) -> dict[str, str]:
    pattern = re.compile(r"<!-- bench:([\w-]+):begin -->\n(.*?)<!-- bench:\1:end -->", re.S)
    return {m.group(1): m.group(2) for m in pattern.finditer(text)}


def write_section(name: str, body: str, path: Path | None = None) -> Path:
    """Replace (or add) section ``name`` of the results file with ``body`` (Markdown);
    rewrite the header for this machine; keep every other section. Returns the path."""
    path = RESULTS if path is None else Path(path)
    sections = _sections(path.read_text()) if path.exists() else {}
    sections[name] = body.rstrip("\n") + "\n"
    names = [n for n in ORDER if n in sections] + sorted(n for n in sections if n not in ORDER)
    parts = [header()]
    for n in names:
        parts.append(f"{_marker(n, False)}\n{sections[n]}{_marker(n, True)}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, path)
    return path
