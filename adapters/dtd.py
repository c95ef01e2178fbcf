"""DTD (Describable Textures Dataset, release dtd-r1.0.1): whole-image texture labels.

Expected layout (``root`` is the unpacked ``dtd`` folder)::

    dtd/
      images/<class>/<class>_NNNN.jpg         47 classes × 120 images
      labels/labels_joint_anno.txt            "<class>/<file>.jpg label1 [label2 ...]"
      labels/{train,val,test}{1..10}.txt      (not used)

Broden reads ``labels_joint_anno.txt`` (the "joint" multi-label annotation): every
texture named on an image's line is a whole-image label, the key attribute first.
The vocabulary is the sorted set of all names (local ids 1..), as Broden built it.
Samples follow the file's line order.
"""

from __future__ import annotations

from functools import cached_property

from broden.adapters.base import Adapter, RootOptions, SampleError, SourceError, SourceSample
from broden.adapters.decode import read_image
from broden.adapters.files import file_text


class DTD(Adapter):
    """Textures from DTD's ``labels/labels_joint_anno.txt``."""

    name = "dtd"
    kinds = {"texture": "image"}
    manifest_name = "dtd"
    options: RootOptions

    @cached_property
    def _entries(self) -> list[tuple[str, list[str]]]:
        path = self.options.root / "labels" / "labels_joint_anno.txt"
        try:
            text = file_text(path)
        except FileNotFoundError:
            raise SourceError(f"DTD: {path} is missing") from None
        except UnicodeDecodeError as e:
            raise SourceError(f"DTD: {path} is not UTF-8 text ({e})") from None
        except OSError as e:
            raise SourceError(f"DTD: cannot read {path} ({e.strerror})") from None
        entries: list[tuple[str, list[str]]] = []
        seen: set[str] = set()
        for lineno, line in enumerate(text.splitlines(), 1):
            tokens = line.split()
            if not tokens:
                continue
            rel, labels = tokens[0], tokens[1:]
            if not rel.lower().endswith((".jpg", ".jpeg", ".png")):
                raise SourceError(
                    f"DTD: {path}:{lineno}: expected '<class>/<file>.jpg label ...', got {line!r}"
                )
            if rel in seen:
                raise SourceError(f"DTD: {path}:{lineno}: image {rel} is listed twice")
            seen.add(rel)
            entries.append((rel, labels))
        if not entries:
            raise SourceError(f"DTD: {path} lists no images")
        return entries

    def check(self) -> None:
        super().check()
        _ = self._entries  # reading the listing checks it

    def vocabulary(self) -> dict[str, dict[int, list[str]]]:
        names = sorted({lab for _, labels in self._entries for lab in labels})
        return {"texture": {i + 1: [n] for i, n in enumerate(names)}}

    @cached_property
    def _ids(self) -> dict[str, int]:
        return {names[0]: i for i, names in self.vocabulary()["texture"].items()}

    def __len__(self) -> int:
        return len(self._entries)

    def source_id(self, index: int) -> str:
        return self._entries[index][0]

    def load(self, index: int) -> SourceSample:
        rel, labels = self._entries[index]
        image = read_image(self.options.root / "images" / rel)
        ids = self._ids
        texture = list(dict.fromkeys(ids[lab] for lab in labels))  # dominant first, no repeats
        if not texture and labels:
            raise SampleError(f"{rel}: no usable texture labels")
        return SourceSample(source_id=rel, image=image, image_labels={"texture": texture})

    def release_version(self) -> str | None:
        return "dtd-r1.0.1"
