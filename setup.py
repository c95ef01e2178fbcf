"""Which repository folder installs as which package (the metadata is in pyproject.toml).

One top-level import name, ``broden``: ``adapters/`` installs as ``broden.adapters``,
``dissect/`` as ``broden.dissect``, ``data_manifests/`` as ``broden.data_manifests``,
``samples/`` (the bundled sample sources) as ``broden.samples`` and ``configs/`` as
``broden.configs``. Every folder below them is a package here, listed from the tree, so a
new subpackage or data folder ships without editing a list; the files that are not Python
ship as package data (compiled files excepted).
"""

from setuptools import find_namespace_packages, setup

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
    exclude_package_data={"": ["*.pyc", "*.pyo", ".DS_Store"]},
)
