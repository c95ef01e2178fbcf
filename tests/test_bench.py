"""Smoke test of the benchmarks: each script in bench/ runs with --quick and writes its
section (with a table) into a results file of its own, not bench/RESULTS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "build": "| workers=2 ",
    "store": "| store, shard-aligned blocks ",
    "codecs": "| zstd level 1 (the store's images) ",
    "dissect": "| `broden.dissect.tally.Tally` ",
    "explain": "| `FormulaSearch`",
    "gpu": "| (a) bare forward pass ",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One results file that every script of this module writes its section into."""
    return tmp_path_factory.mktemp("bench") / "RESULTS.md"


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_a_benchmark_writes_its_section_with_a_table(
    name: str, results: Path, tmp_path: Path
) -> None:
    before = results.read_text() if results.exists() else ""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{name}.py"), "--quick"]
        + ["--results", str(results), "--work", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    row = SCRIPTS[name]
    assert row in proc.stdout  # the table is printed ...
    text = results.read_text()  # ... and written in the script's own section
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    section = text[text.index(begin) : text.index(end)]
    assert row in section and "| ---" in section and "Measured " in section
    assert text.startswith("# Benchmark results") and "- CPU: " in text
    # the sections written before are kept
    for other in SCRIPTS:
        if f"<!-- bench:{other}:begin -->" in before:
            assert f"<!-- bench:{other}:begin -->" in text


def test_results_sections_are_replaced_in_place(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO))
    try:
        from bench.results_file import md_table, write_section
    finally:
        sys.path.remove(str(REPO))
    path = tmp_path / "R.md"
    write_section("dissect", "## D\n\nold", path)
    write_section("build", "## B\n\n" + md_table(["a", "b"], [["x", 1]]), path)
    write_section("dissect", "## D\n\nnew", path)
    text = path.read_text()
    assert "old" not in text and text.count("## D") == 1
    assert text.index("## B") < text.index("## D")  # make bench order: build first
    assert "| x   |   1 |\n" in text and "| --- | --: |\n" in text
