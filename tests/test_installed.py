"""The installed layout, for real: the wheel and the sdist are built (offline, from a copy of
the repository) and installed with pip into fresh virtual environments next to stand-ins of
the distributions whose top-level names our folders carry (AdapterHub's ``adapters``,
Fox-IT's ``dissect.*``).

- the wheel holds every module and data file of the four package folders at its installed
  path (``adapters/x.py`` → ``broden/adapters/x.py``, ...), nothing else, one top-level
  name (``broden``) and the entry points of pyproject.toml; a subpackage forgotten in the
  explicit ``packages`` list of pyproject.toml fails here, named;
- a wheel built from the sdist holds the same files (the sdist is complete);
- installed next to the stand-ins, in either order, neither overwrites the other's files
  (every file's hash is checked against its RECORD), ``import adapters`` is the stand-in's,
  ``broden.adapters`` is ours, and the ``broden`` console script works; uninstalling the
  stand-ins leaves broden whole;
- in the development environment (this process, editable install) ``broden.adapters`` is
  the repository's ``adapters/`` folder and no module of ours is loaded a second time under
  its folder name.

The venvs are made with ``--without-pip`` (seconds) and see the development venv's
site-packages (torch, numpy, ...) through a ``.pth`` file pointing at a folder of links to
its entries, less broden's own (its editable finder and ``.dist-info``): the target
environment then has no broden but the one installed into it, so pip neither considers
the development install as the thing to replace nor finds two ``broden`` distributions.
"""

from __future__ import annotations

import ast
import base64
import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import REPO

#: repository folder → the package it installs as; nothing else of the repository is installed
FOLDERS = {
    "broden": "broden",
    "adapters": "broden.adapters",
    "dissect": "broden.dissect",
    "data_manifests": "broden.data_manifests",
    "samples": "broden.samples",
    "configs": "broden.configs",
}
TOP_LEVEL = "broden"
#: without git, what a repository copy leaves out: at the top, and at any depth
#: (broden/build/ is a package, only the top-level build/ is an output)
COPY_IGNORE_TOP = {".git", ".venv", "build", "dist", "demo-out", "results", ".bench"}
COPY_IGNORE = shutil.ignore_patterns(
    "__pycache__",
    "*.egg-info",
    "*.zarr",
    "*.zarr.build",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
)
ADAPTERS_MARK = "adapterhub-stand-in"
DISSECT_MARK = "fox-it-stand-in"
TIMEOUT = 300


# --- running commands -----------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: no PYTHONPATH or venv of the caller leaks in, pip
    reads no user configuration and never asks or checks for a newer version."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PYTHONPATH",
            "PYTHONHOME",
            "PYTHONSTARTUP",
            "VIRTUAL_ENV",
            "PYTHONUSERBASE",
            "__PYVENV_LAUNCHER__",
        )
        and not k.startswith("PIP_")
    }
    env.update(
        PYTHONNOUSERSITE="1",
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INPUT="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        **extra,
    )
    return env


def run(
    cmd: Sequence[str | Path], cwd: Path, *, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``cmd`` run from ``cwd``; with ``check``, a failure shows its output in full."""
    args = [str(c) for c in cmd]
    result = subprocess.run(
        args, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"command failed (exit {result.returncode}): {' '.join(args)}\n  in {cwd}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
    return result


def pip(*args: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The development venv's pip (offline, no cache)."""
    return run([sys.executable, "-m", "pip", *args], cwd, check=check)


# --- the repository and its builds ----------------------------------------------------------


def pyproject(repo: Path = REPO) -> dict:
    return tomllib.loads((repo / "pyproject.toml").read_text())


def source_files(repo: Path) -> list[str]:
    """The repository's files as git sees them (tracked, plus untracked ones it does not
    ignore), relative paths; without git, every file less the build outputs."""
    try:
        out = subprocess.run(
            [
                "git",
                "-C",
                str(repo),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout.decode()
        files = [f for f in out.split("\0") if f and (repo / f).is_file()]
        if files:
            return sorted(files)
    except (OSError, subprocess.SubprocessError):
        pass
    found: list[str] = []
    for root, dirs, names in os.walk(repo):
        skip = COPY_IGNORE(root, dirs) | (COPY_IGNORE_TOP if Path(root) == repo else set())
        dirs[:] = sorted(set(dirs) - skip)
        found += [
            Path(root, n).relative_to(repo).as_posix()
            for n in names
            if n not in COPY_IGNORE(root, names)
        ]
    return sorted(found)


def copy_repo(dst: Path, files: Sequence[str]) -> Path:
    """A copy of the repository's ``files`` at ``dst``: builds write build/ and *.egg-info
    there, not into the working tree."""
    for rel in files:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dst / rel, follow_symlinks=True)
    return dst


def build_wheel(project: Path, out: Path) -> Path:
    """The wheel of ``project``, by the development venv's pip without build isolation."""
    out.mkdir(parents=True, exist_ok=True)
    pip(
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--no-cache-dir",
        "-w",
        out,
        project,
        cwd=project,
    )
    wheels = sorted(out.glob("*.whl"))
    assert len(wheels) == 1, f"pip wheel made {wheels} in {out}, expected one wheel"
    return wheels[0]


def build_sdist(project: Path, out: Path) -> Path:
    """The sdist of ``project``, by setuptools' PEP 517 backend (``build`` is not needed)."""
    out.mkdir(parents=True, exist_ok=True)
    code = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    name = run([sys.executable, "-c", code, out], project).stdout.strip().splitlines()[-1]
    return out / name


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def installed_path(rel: str) -> str | None:
    """Where the repository file ``rel`` lands in an installation, or None when it is not
    part of a package folder."""
    parts = Path(rel).parts
    if len(parts) < 2 or parts[0] not in FOLDERS or "__pycache__" in parts:
        return None
    if parts[-1].endswith((".pyc", ".pyo")):
        return None
    return "/".join([*FOLDERS[parts[0]].split("."), *parts[1:]])


def package_of(rel: str) -> tuple[str, str]:
    """(the installed package, its repository folder) a file of a package folder is in."""
    folder = Path(rel).parent
    dotted = FOLDERS[folder.parts[0]].split(".") + list(folder.parts[1:])
    return ".".join(dotted), folder.as_posix()


def wheel_problems(repo: Path, files: Sequence[str], wheel: Path) -> list[str]:
    """What is wrong with ``wheel`` as the build of ``repo`` (whose files are ``files``):
    files of the package folders that it lacks (naming their package), files it should not
    have, top-level names besides broden."""
    sources = {p: f for f in files if (p := installed_path(f)) is not None}
    expected = set(sources)
    names = wheel_names(wheel)
    info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    problems: list[str] = []
    for path in sorted(expected - names):
        rel = sources[path]
        package, folder = package_of(rel)
        what = "module" if rel.endswith(".py") else "data file"
        problems.append(
            f"{what} {rel} (package {package}, folder {folder}/) is not in the wheel at {path}"
        )
    problems += [
        f"the wheel has {n}, which is no file of the package folders"
        for n in sorted(names - expected - info)
    ]
    tops = sorted({n.split("/")[0] for n in names - info})
    if tops != [TOP_LEVEL]:
        problems.append(f"the wheel's top-level names are {tops}, expected only {TOP_LEVEL!r}")
    return problems


@pytest.fixture(scope="module")
def sources() -> list[str]:
    return source_files(REPO)


@pytest.fixture(scope="module")
def wheel_build(tmp_path_factory: pytest.TempPathFactory, sources: list[str]) -> tuple[Path, Path]:
    """(the repository copy, its wheel): built once, so the working tree is not touched."""
    base = tmp_path_factory.mktemp("wheel")
    repo = copy_repo(base / "repo", sources)
    return repo, build_wheel(repo, base / "dist")


@pytest.fixture(scope="module")
def wheel(wheel_build: tuple[Path, Path]) -> Path:
    return wheel_build[1]


# --- the wheel and the sdist ----------------------------------------------------------------


def test_setup_maps_the_folders_under_one_name() -> None:
    """setup.py's folder → package mapping is the one these tests check the wheel against."""
    tree = ast.parse((REPO / "setup.py").read_text())
    (mapping,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "FOLDERS"
    ]
    assert mapping == {package: folder for folder, package in FOLDERS.items()}
    assert "tool" not in pyproject() or "setuptools" not in pyproject()["tool"], (
        "the package layout is setup.py's; pyproject.toml must not set packages too"
    )


def test_wheel_holds_every_module_and_data_file(
    wheel_build: tuple[Path, Path], sources: list[str]
) -> None:
    repo, wheel = wheel_build
    problems = wheel_problems(repo, sources, wheel)
    assert not problems, "the wheel is not the installed layout:\n  " + "\n  ".join(problems)
    names = wheel_names(wheel)
    # a few of the files the installed package reads, by name
    for path in (
        "broden/adapters/dtd.py",
        "broden/dissect/report/page.py",
        "broden/data_manifests/dtd.yaml",
        "broden/data_manifests/w2color.npy",
        "broden/data_manifests/synonyms_preferred.csv",
        "broden/dissect/report/templates/report.html.j2",
    ):
        assert path in names, f"{path} is not in the wheel"


def dist_info(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        (info,) = {n.split("/")[0] for n in z.namelist() if n.split("/")[0].endswith(".dist-info")}
        return z.read(f"{info}/{name}").decode()


def test_wheel_metadata_and_entry_points(wheel: Path) -> None:
    project = pyproject()["project"]
    assert dist_info(wheel, "top_level.txt").split() == [TOP_LEVEL]
    metadata = dist_info(wheel, "METADATA")
    assert re.search(r"^Name: broden$", metadata, re.M), metadata[:300]
    assert re.search(rf"^Version: {re.escape(project['version'])}$", metadata, re.M)
    assert re.search(r"^License-Expression: MIT$", metadata, re.M), metadata[:600]
    urls = dict(
        line.removeprefix("Project-URL: ").split(", ", 1)
        for line in metadata.splitlines()
        if line.startswith("Project-URL: ")
    )
    assert urls == project["urls"], urls
    # the long description (body after the headers) is the README, no link into the repository
    _, _, description = metadata.partition("\n\n")
    assert "# broden" in description and "make demo" in description, description[:300]
    relative = re.findall(r"\]\((?![a-z][a-z0-9+.-]*:|#)[^)\s]+\)", description)
    assert relative == [], f"links that break off the repository: {relative}"
    assert "how the code is organised (`docs/ARCHITECTURE.md` in the source tree)" in description

    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(dist_info(wheel, "entry_points.txt"))
    groups = {s: dict(parser[s]) for s in parser.sections()}
    assert {"broden.adapters", "broden.commands", "console_scripts"} <= set(groups), groups
    assert groups["console_scripts"] == {"broden": "broden.cli:main"}
    assert groups["broden.adapters"]["dtd"] == "broden.adapters.dtd:DTD"
    declared = {**project["entry-points"], "console_scripts": project["scripts"]}
    assert groups == declared, "entry_points.txt differs from pyproject.toml"

    # every entry point names a module the wheel has
    names = wheel_names(wheel)
    for group, eps in groups.items():
        for name, target in eps.items():
            module = target.partition(":")[0].replace(".", "/")
            assert f"{module}.py" in names or f"{module}/__init__.py" in names, (
                f"entry point {group}:{name} = {target}: the wheel has no module {module}"
            )


def test_a_new_subpackage_or_data_folder_ships_without_editing_a_list(
    tmp_path: Path, sources: list[str]
) -> None:
    """setup.py lists the packages from the tree: new folders of code or data ship."""
    repo = copy_repo(tmp_path / "repo", sources)
    (repo / "dissect" / "newpart").mkdir()
    (repo / "dissect" / "newpart" / "__init__.py").write_text('"""A new subpackage."""\n')
    (repo / "dissect" / "newpart" / "thing.py").write_text("X = 1\n")
    (repo / "samples" / "extra").mkdir()
    (repo / "samples" / "extra" / "labels.csv").write_text("id,name\n1,thing\n")
    files = [*sources, "dissect/newpart/__init__.py", "dissect/newpart/thing.py"]
    files += ["samples/extra/labels.csv"]
    wheel = build_wheel(repo, tmp_path / "dist")
    assert wheel_problems(repo, files, wheel) == []
    assert "broden/dissect/newpart/thing.py" in wheel_names(wheel)
    assert "broden/samples/extra/labels.csv" in wheel_names(wheel)


def test_sdist_builds_the_same_wheel(tmp_path: Path, sources: list[str], wheel: Path) -> None:
    repo = copy_repo(tmp_path / "repo", sources)
    sdist = build_sdist(repo, tmp_path / "sdist")
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extractall(tmp_path / "unpacked", filter="data")
        else:
            tar.extractall(tmp_path / "unpacked")  # our own sdist
    (root,) = (tmp_path / "unpacked").iterdir()
    for needed in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        assert (root / needed).is_file(), f"the sdist has no {needed}"
    assert not (root / "tests").exists(), "the sdist ships tests it cannot run (MANIFEST.in)"
    from_sdist = build_wheel(root, tmp_path / "dist")
    direct, rebuilt = wheel_names(wheel), wheel_names(from_sdist)
    assert rebuilt == direct, (
        "the wheel built from the sdist differs from the wheel built from the repository:\n"
        f"  missing from the sdist's wheel: {sorted(direct - rebuilt)}\n"
        f"  only in the sdist's wheel: {sorted(rebuilt - direct)}"
    )
    assert dist_info(from_sdist, "entry_points.txt") == dist_info(wheel, "entry_points.txt")


# --- installed next to the stand-ins --------------------------------------------------------


def record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(out: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A minimal valid pure-Python wheel of distribution ``name`` holding ``files``."""
    stem = re.sub(r"[-_.]+", "_", name).lower()
    info = f"{stem}-{version}.dist-info"
    contents = {path: text.encode() for path, text in files.items()}
    contents[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        "Summary: a stand-in for the tests of broden's installed layout\n"
    ).encode()
    contents[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: broden-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [record_line(p, d) for p, d in contents.items()] + [f"{info}/RECORD,,"]
    contents[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = out / f"{stem}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name_, data in contents.items():
            z.writestr(name_, data)
    return path


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Wheels of ``adapters`` 0.0.1 (a regular package, with a module named like one of
    ours) and ``dissect.cstruct`` 0.0.1 (under the namespace package ``dissect``)."""
    out = tmp_path_factory.mktemp("stand-ins")
    return [
        make_wheel(
            out,
            "adapters",
            "0.0.1",
            {
                "adapters/__init__.py": f"MARK = {ADAPTERS_MARK!r}\n",
                "adapters/base.py": f"MARK = {ADAPTERS_MARK + ' base'!r}\n",
            },
        ),
        make_wheel(
            out,
            "dissect.cstruct",
            "0.0.1",
            {
                "dissect/cstruct/__init__.py": f"MARK = {DISSECT_MARK!r}\n",
            },
        ),
    ]


STAND_IN_NAMES = ("adapters", "dissect.cstruct")


@pytest.fixture(scope="module")
def dev_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of links to the development venv's site-packages, less broden's own
    entries (editable finder, .pth files, .dist-info) and anything named like a stand-in."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests run outside a virtual environment; they borrow its packages")
    version = tuple(int(x) for x in re.findall(r"\d+", pip("--version", cwd=REPO).stdout)[:2])
    if version < (22, 3):
        pytest.skip(f"pip {version} has no --python option (22.3 or later needed)")
    farm = tmp_path_factory.mktemp("dev-site")
    skip = re.compile(r"^(broden|__editable__|adapters|dissect)|\.pth$", re.I)
    sites = dict.fromkeys(Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib"))
    try:
        for site in sites:
            for entry in sorted(site.iterdir()):
                if not skip.search(entry.name) and not (farm / entry.name).exists():
                    (farm / entry.name).symlink_to(entry, entry.is_dir())
    except OSError as e:
        pytest.skip(f"cannot link the development venv's packages: {e}")
    return farm


class Venv:
    """A fresh venv without pip that sees the development venv's packages (``dev_site``)."""

    def __init__(self, root: Path, dev_site: Path, cwd: Path) -> None:
        self.root, self.cwd = root, cwd
        made = subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(root)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=clean_env(),
        )
        self.python = root / "bin" / "python"
        if made.returncode != 0 or not self.python.exists():
            pytest.skip(f"cannot create a virtual environment here: {made.stderr.strip()}")
        code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        self.site = Path(run([self.python, "-I", "-c", code], cwd).stdout.strip())
        (self.site / "_broden_tests_dev_site.pth").write_text(f"{dev_site}\n")

    def pip(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return pip("--python", self.python, *args, cwd=self.cwd, check=check)

    def install(self, *wheels: Path) -> None:
        self.pip(
            "install",
            "--no-deps",
            "--no-index",
            "--no-cache-dir",
            "--no-warn-script-location",
            *wheels,
        )

    def probe(self) -> dict:
        """What the venv's python imports (``PROBE``), from the neutral folder."""
        out = run([self.python, "-I", "-c", PROBE], self.cwd).stdout
        return json.loads(out.strip().splitlines()[-1])

    def broden(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The venv's ``broden`` console script."""
        script = self.root / "bin" / "broden"
        assert script.is_file(), f"pip installed no console script at {script}"
        shebang = script.read_text().splitlines()[0]
        assert str(self.root) in shebang, f"{script} runs {shebang!r}, not the venv's python"
        return run([script, *args], self.cwd)


#: run by a venv's python (-I: no cwd, no PYTHONPATH on sys.path); prints one JSON line
PROBE = r'''
import hashlib, base64, importlib.util, json, sys
from importlib import metadata, resources

def where(m):
    return getattr(m, "__file__", None)

def damaged(name):
    """files of distribution `name` that are missing or differ from its RECORD"""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    bad = []
    for f in dist.files or []:
        path = f.locate()
        if not path.exists():
            bad.append(f"missing: {f}")
        elif f.hash is not None:
            digest = hashlib.new(f.hash.mode, path.read_bytes()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != f.hash.value:
                bad.append(f"changed: {f}")
    return {"at": str(dist.locate_file("")), "damaged": bad}

import broden, broden.adapters, broden.dissect, broden.cli, broden.data_manifests
from broden.adapters import available_adapters, get_adapter_class
dtd = get_adapter_class("dtd")
out = {
    "prefix": sys.prefix,
    "files": {m.__name__: where(m) for m in (broden, broden.adapters, broden.dissect,
                                              broden.cli, broden.data_manifests)},
    "dtd": [dtd.__module__, where(sys.modules[dtd.__module__])],
    "adapters": sorted(available_adapters()),
    "data": [resources.files("broden.data_manifests").joinpath("dtd.yaml").is_file(),
             # broden.dissect, not broden.dissect.report: that one imports torch (seconds)
             resources.files("broden.dissect").joinpath(
                 "report/templates/report.html.j2").is_file()],
    "editable_finder": [m for m in sys.modules if "editable" in m],
    "records": {n: damaged(n) for n in ("broden", "adapters", "dissect.cstruct")},
}
broden_dir = broden.__file__.rsplit("/", 1)[0] + "/"
out["double"] = sorted(n for n, m in list(sys.modules.items())
                       if (where(m) or "").startswith(broden_dir) and n.split(".")[0] != "broden")
if importlib.util.find_spec("adapters") is not None:
    import adapters, adapters.base
    out["top_adapters"] = [getattr(adapters, "MARK", None), getattr(adapters.base, "MARK", None),
                           where(adapters)]
else:
    out["top_adapters"] = None
try:
    import dissect.cstruct
    out["top_dissect"] = [dissect.cstruct.MARK, where(dissect), list(dissect.__path__)]
except ImportError as e:
    out["top_dissect"] = None
print(json.dumps(out))
'''


def check_broden(venv: Venv, probe: dict) -> None:
    """broden imports from the venv, whole, with its data, and its console script works."""
    inside = str(venv.site / "broden") + "/"
    assert probe["prefix"] == str(venv.root), probe["prefix"]
    for name, file in probe["files"].items():
        assert file and file.startswith(inside), f"{name} comes from {file}, not from {inside}"
    assert probe["files"]["broden.adapters"] == inside + "adapters/__init__.py"
    assert probe["dtd"] == ["broden.adapters.dtd", inside + "adapters/dtd.py"], probe["dtd"]
    assert "dtd" in probe["adapters"], probe["adapters"]
    assert probe["data"] == [True, True], "package data is not installed"
    assert not probe["editable_finder"], f"the editable finder leaked in: {probe}"
    assert not probe["double"], f"broden's files loaded under other names: {probe['double']}"
    record = probe["records"]["broden"]
    assert record and record["at"] == str(venv.site), f"broden's distribution: {record}"
    assert not record["damaged"], f"broden's installed files were touched: {record['damaged']}"

    listed = venv.broden("adapters")
    lines = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip()}
    assert "dtd" in lines and "broden.adapters.dtd:DTD" in lines["dtd"], listed.stdout
    assert "error" not in listed.stderr.lower(), f"`broden adapters` complains:\n{listed.stderr}"


def check_stand_ins(probe: dict) -> None:
    """The stand-ins are what ``import adapters`` / ``import dissect.cstruct`` give, intact."""
    assert probe["top_adapters"] is not None, "`import adapters` finds nothing"
    mark, base_mark, file = probe["top_adapters"]
    assert (mark, base_mark) == (ADAPTERS_MARK, ADAPTERS_MARK + " base"), (
        f"`import adapters` is not the stand-in: {probe['top_adapters']}"
    )
    assert probe["top_dissect"] is not None, "`import dissect.cstruct` fails"
    assert probe["top_dissect"][0] == DISSECT_MARK, probe["top_dissect"]
    assert probe["top_dissect"][1] is None, f"dissect is no namespace package: {probe}"
    for name in STAND_IN_NAMES:
        record = probe["records"][name]
        assert record is not None, f"{name} is not installed"
        assert not record["damaged"], f"{name}'s installed files were touched: {record}"


@pytest.fixture
def neutral(tmp_path: Path) -> Path:
    """An empty working folder: the repository root would put its own adapters/ on the
    path of ``python -c``."""
    (tmp_path / "cwd").mkdir()
    return tmp_path / "cwd"


@pytest.mark.slow
@pytest.mark.parametrize("order", ["stand-ins-first", "broden-first"])
def test_installs_next_to_adapters_and_dissect(
    order: str,
    tmp_path: Path,
    neutral: Path,
    dev_site: Path,
    wheel: Path,
    stand_ins: list[Path],
) -> None:
    venv = Venv(tmp_path / "venv", dev_site, neutral)
    if order == "stand-ins-first":
        venv.install(*stand_ins)
        venv.install(wheel)
    else:
        venv.install(wheel)
        alone = venv.probe()
        check_broden(venv, alone)
        assert alone["top_adapters"] is None and alone["top_dissect"] is None, (
            f"broden alone installs a top-level adapters or dissect: {alone}"
        )
        venv.install(*stand_ins)
    both = venv.probe()
    check_broden(venv, both)
    check_stand_ins(both)

    venv.pip("uninstall", "-y", *STAND_IN_NAMES)
    after = venv.probe()
    check_broden(venv, after)
    assert after["top_adapters"] is None, f"`import adapters` still works: {after}"
    assert all(after["records"][n] is None for n in STAND_IN_NAMES), after["records"]

    # pip check: the dependencies come from the development venv's packages; only a
    # complaint naming broden (or a stand-in) is ours to fail on
    checked = venv.pip("check", check=False)
    ours = [
        line
        for line in (checked.stdout + checked.stderr).splitlines()
        if re.match(r"(broden|adapters|dissect)\b", line, re.I)
    ]
    assert not ours, f"pip check:\n{checked.stdout}{checked.stderr}"


@pytest.mark.slow
def test_a_first_session_from_the_wheel(
    tmp_path: Path, neutral: Path, dev_site: Path, wheel: Path, stand_ins: list[Path]
) -> None:
    """What a user does first after `pip install broden-*.whl`, in a folder outside any
    clone, next to AdapterHub's adapters: the version, the bundled sample built (its files
    are package data), dissected and reported."""
    venv = Venv(tmp_path / "venv", dev_site, neutral)
    venv.install(*stand_ins)
    venv.install(wheel)
    version = venv.broden("--version").stdout
    assert version == f"broden {pyproject()['project']['version']}\n", version
    built = venv.broden("build", "-q")
    assert "images: 26  (ade20k 2, dtd 24)" in built.stdout, built.stdout
    assert (neutral / "broden-sample.zarr" / "zarr.json").is_file()
    assert "valid" in venv.broden("validate", "broden-sample.zarr").stdout
    args = ["--model", "dissect.zoo:resnet18", "--layer", "layer4", "--out", "out"]
    dissected = venv.broden("dissect", "broden-sample.zarr", *args, "--workers", "0", "-q")
    assert "layer4: " in dissected.stdout and " of 512 units are detectors" in dissected.stdout
    assert (neutral / "out" / "report.html").is_file()
    page = venv.broden("report", "out", "--top-k", "3", "-q").stdout
    assert page.strip() == f"report: {Path('out') / 'report.html'}", page


# --- the development environment ------------------------------------------------------------


def loaded_files() -> Iterator[tuple[str, Path]]:
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file:
            yield name, Path(file).resolve()


def test_editable_install_maps_the_repository_folders() -> None:
    import broden
    import broden.adapters
    import broden.cli
    import broden.data_manifests
    import broden.dissect

    for module, folder in (
        (broden, "broden"),
        (broden.adapters, "adapters"),
        (broden.dissect, "dissect"),
        (broden.data_manifests, "data_manifests"),
    ):
        assert Path(module.__file__ or "").resolve() == REPO / folder / "__init__.py", (
            f"{module.__name__} comes from {module.__file__}, not from {folder}/"
        )
    roots = {REPO / folder: package for folder, package in FOLDERS.items()}
    double = []
    for name, file in loaded_files():
        for root, package in roots.items():
            if file.is_relative_to(root) and not (
                name == package or name.startswith(package + ".")
            ):
                double.append(f"{name} ({file.relative_to(REPO)})")
    assert not double, (
        "modules of the repository are loaded under their folder names, a second copy "
        f"next to the broden.* one: {double}"
    )
