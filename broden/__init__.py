"""broden: build the Broden densely labeled concept dataset and read it back.

Public API::

    from broden import load_config, build, open_store, validate_store
    summary = build(load_config("configs/broden1.yaml"), "broden1_224.zarr", workers=8)
    store = open_store("broden1_224.zarr")
    sample = store.sample(0)          # image, pixel labels, image labels, source, split
    add("broden1_224.zarr", load_config("my_coco.yaml"))   # append sources; ids kept
"""

from broden.build import BuildSummary, build
from broden.config import BuildConfig, load_config, parse_config
from broden.errors import BrodenError, BuildError, ConfigError, StoreError
from broden.extend import add
from broden.store import BrodenStore, open_store, upgrade_store, validate_store

__all__ = [
    "BrodenError",
    "BrodenStore",
    "BuildConfig",
    "BuildError",
    "BuildSummary",
    "ConfigError",
    "StoreError",
    "add",
    "build",
    "load_config",
    "open_store",
    "parse_config",
    "upgrade_store",
    "validate_store",
]
