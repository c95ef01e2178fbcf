"""The one YAML loader of broden's user files (build configs, concept sets): PyYAML's safe
loader, except that a mapping which repeats a key is an error naming the key and both
lines, where PyYAML keeps the last value without a word.

>>> try:
...     safe_load("image_size: 224\\nimage_size: 112\\n")
... except yaml.YAMLError as e:
...     print(describe(e))
line 2, column 1: duplicate key 'image_size' (first given on line 1)
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

_MERGE = "tag:yaml.org,2002:merge"


class DuplicateKeyError(ConstructorError):
    """A mapping gives the same key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """:class:`yaml.SafeLoader` that refuses a mapping with a repeated key. Keys brought in
    by a merge (``<<: *defaults``) may still be overridden: that is what merging is for."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
                if not isinstance(key, Hashable):
                    continue  # PyYAML's own error ("found unhashable key") follows
                line = key_node.start_mark.line + 1
                if key in first:
                    raise DuplicateKeyError(
                        None,
                        None,
                        f"duplicate key {key!r} (first given on line {first[key]})",
                        key_node.start_mark,
                    )
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str | bytes) -> Any:
    """The document in ``text``, like :func:`yaml.safe_load` but refusing repeated keys
    (:class:`DuplicateKeyError`, a :class:`yaml.YAMLError`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def describe(error: yaml.YAMLError) -> str:
    """One line for a YAML error: ``line L, column C: problem`` (PyYAML's own message
    spans several lines and repeats the file's name)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if problem is None:
        return " ".join(str(error).split())
    context = getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (f"{problem} ({context})" if context else str(problem))
