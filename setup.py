"""Which repository folder installs as which package (the metadata is in pyproject.toml).

One top-level import name, ``broden``: ``adapters/`` installs as ``broden.adapters``,
``dissect/`` as ``broden.dissect``, ``data_manifests/`` as ``broden.data_manifests``,
``samples/`` (the bundled sample sources) as ``broden.samples`` and ``configs/`` as
``broden.configs``. Every folder below them is a package here, listed from the tree, so a
new subpackage or data folder ships without editing a list; the files that are not Python
ship as package data (compiled files excepted).

The long description is README.md with its links into the repository made readable off the
repository (on PyPI, in ``pip show``): the project has no public home yet, so a link to a
repository file becomes the file's path in code font, and the report screenshot becomes its
caption. Links to other sites and to the README's own sections are kept.
"""

import re
from pathlib import Path

from setuptools import find_namespace_packages, setup

#: A markdown link or image whose target is neither a URL nor a section of the page itself.
RELATIVE_LINK = re.compile(r"(!?)\[([^\]]*)\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)")


def long_description(readme: Path) -> str:
    """README.md with every relative link written as plain text (see the module docstring)."""

    def plain(match: re.Match[str]) -> str:
        image, text, target = match.groups()
        if image:
            return f"*{text}*"
        text = text.strip("`")
        return f"`{text}`" if text == target else f"{text} (`{target}` in the source tree)"

    return RELATIVE_LINK.sub(plain, readme.read_text(encoding="utf-8"))


FOLDERS = {
    "broden": "broden",
    "broden.adapters": "adapters",
    "broden.dissect": "dissect",
    "broden.data_manifests": "data_manifests",
    "broden.samples": "samples",
    "broden.configs": "configs",
}

packages = []
for package, folder in FOLDERS.items():
    found = find_namespace_packages(folder, exclude=["*__pycache__*", "*.egg-info*"])
    packages += [package, *(f"{package}.{sub}" for sub in found)]

setup(
    package_dir=FOLDERS,
    packages=packages,
    package_data={package: ["*"] for package in packages},
    long_description=long_description(Path(__file__).with_name("README.md")),
    long_description_content_type="text/markdown",
    exclude_package_data={"": ["*.pyc", "*.pyo", ".DS_Store"]},
)
