"""The inputs of a formula search, compacted: the dataset's concept masks (built once per
store) and a unit's active pixels (one per unit).

Concept masks are binary: concept c covers pixel p of image i when c labels p in any
label layer of its categories, and a whole-image label covers every pixel of its image.
A pixel's *label set* is the set of concepts covering it. Every formula of concepts
(:mod:`broden.dissect.explain.formulas`) is a function of the label set alone, so the
search never needs single pixels of the dataset, only *atoms*: the distinct label sets
of the whole dataset, each with its *area* (the number of pixels, over all images, that
carry exactly that set). :class:`ConceptMasks` keeps

- the atoms as a compressed sparse row table (``atom_ptr``, ``atom_concepts``: each
  atom's concept ids, ascending) and ``atom_area``, with the inverse table
  (``concept_ptr``, ``concept_atoms``: each concept's atoms, ascending);
- ``concept_area[c] = |c|``, the pixels concept c covers over all images;
- per pixel its atom, in two levels to keep it small: ``pixel_atom[i, p]`` is a local
  index (uint16 while an image has at most 65,536 label sets, which every L ≤ 256 has)
  into image i's row ``image_atoms[image_atom_ptr[i]:image_atom_ptr[i + 1]]`` of global
  atom ids. At L = 112 that is 25 KB per image (1.6 GB for 63k images).

A unit's mask arrives as its active pixels, (image, flat pixel index) pairs
(:class:`UnitMask`); :meth:`ConceptMasks.unit_atoms` turns them into the atoms they fall
on and how many of the unit's pixels fall on each (:class:`UnitAtoms`), from which every
count the search needs about the unit follows. All counts are integers (int64; sums
with ``np.bincount`` weights are float64 sums of integers below 2**53, hence exact and
independent of order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

#: one image's concept masks: (concept id, mask), the mask being flat pixel indices
#: (integer array), a boolean array of L×L (or L²) pixels, or None for a whole-image label
ImageConcepts = Sequence[tuple[int, "np.ndarray | None"]]


def gather_rows(ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the rows ``rows`` of a CSR table with row pointers ``ptr``: (for each stored
    element of those rows, the position of its row in ``rows``; its position in the
    table's data array). No Python loop."""
    rows = np.asarray(rows, np.int64)
    starts = ptr[rows]
    lens = ptr[rows + 1] - starts
    total = int(lens.sum())
    which = np.repeat(np.arange(len(rows), dtype=np.int64), lens)
    offset = np.repeat(starts - (np.cumsum(lens) - lens), lens)
    return which, np.arange(total, dtype=np.int64) + offset


def weighted_counts(index: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """``out[k] = sum(weights[index == k])`` as int64 (exact for sums below 2**53)."""
    if len(index) == 0:
        return np.zeros(size, np.int64)
    return np.bincount(index, weights=weights, minlength=size).astype(np.int64)


@dataclass(frozen=True, eq=False)
class UnitMask:
    """A unit's binary mask at label resolution as its active pixels: ``image[k]``,
    ``pixel[k]`` (flat index ``row * L + column``) of its k-th active pixel. Each (image,
    pixel) pair must occur at most once (the mask is a set). ``unit``: the unit's index,
    carried into the result."""

    unit: int
    image: np.ndarray
    pixel: np.ndarray

    def __post_init__(self) -> None:
        image = np.asarray(self.image, np.int64).ravel()
        pixel = np.asarray(self.pixel, np.int64).ravel()
        if image.shape != pixel.shape:
            raise ValueError(
                f"unit {self.unit}: {image.size} image indices for {pixel.size} pixel indices; "
                "expected one image index per active pixel"
            )
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "pixel", pixel)

    def __len__(self) -> int:
        return len(self.pixel)

    @classmethod
    def from_dense(cls, unit: int, mask: np.ndarray) -> UnitMask:
        """From a boolean mask (n_images, L, L) or (n_images, L²)."""
        m = np.asarray(mask, bool)
        flat = m.reshape(m.shape[0], -1)
        image, pixel = np.nonzero(flat)
        return cls(unit, image, pixel)

    @classmethod
    def from_per_image(cls, unit: int, pixels: Sequence[np.ndarray]) -> UnitMask:
        """From each image's flat indices of active pixels (``pixels[i]`` for image i)."""
        lens = [len(p) for p in pixels]
        image = np.repeat(np.arange(len(pixels), dtype=np.int64), lens)
        flat = np.concatenate([np.asarray(p, np.int64) for p in pixels]) if pixels else image
        return cls(unit, image, flat)


@dataclass(frozen=True, eq=False)
class UnitAtoms:
    """A unit's active pixels by atom: ``atoms`` (global atom ids, ascending) the unit's
    pixels fall on and ``weight[k] = |M ∩ atoms[k]|``; the unit's (atom, concept) pairs
    sorted by concept (``pair_local``: index into ``atoms``; ``pair_concept``;
    ``concept_ptr``: each concept's range of pairs), ``size = |M|`` and
    ``concept_inter[c] = |M ∩ c|``."""

    unit: int
    atoms: np.ndarray
    weight: np.ndarray
    pair_local: np.ndarray
    pair_concept: np.ndarray
    pair_weight: np.ndarray
    concept_ptr: np.ndarray
    size: int
    concept_inter: np.ndarray

    def leaf(self, concept: int) -> np.ndarray:
        """Boolean over ``atoms``: the unit's atoms that concept ``concept`` covers."""
        out = np.zeros(len(self.atoms), bool)
        out[self.pair_local[self.concept_ptr[concept] : self.concept_ptr[concept + 1]]] = True
        return out

    def inter_by_concept(self, mask: np.ndarray) -> tuple[int, np.ndarray]:
        """For a set F given as a boolean over ``atoms``: (|M ∩ F|, |M ∩ F ∩ c| for every c)."""
        on = mask[self.pair_local]
        counts = weighted_counts(
            self.pair_concept[on], self.pair_weight[on], len(self.concept_inter)
        )
        return int(self.weight[mask].sum()), counts


@dataclass(frozen=True, eq=False)
class ConceptMasks:
    """Every concept's binary mask over the dataset, as atoms (see the module docstring).

    Build it with :meth:`from_images` (per image, each concept's pixels), :meth:`from_dense`
    (a dense boolean array, for tests and small data) or :class:`ConceptMasksBuilder`
    (image by image, for a store read in blocks). Concept ids index ``names``.
    """

    names: tuple[str, ...]
    label_size: int
    pixel_atom: np.ndarray
    image_atom_ptr: np.ndarray
    image_atoms: np.ndarray
    atom_ptr: np.ndarray
    atom_concepts: np.ndarray
    atom_area: np.ndarray
    concept_ptr: np.ndarray
    concept_atoms: np.ndarray
    concept_area: np.ndarray

    @property
    def n_images(self) -> int:
        return int(self.pixel_atom.shape[0])

    @property
    def n_concepts(self) -> int:
        return len(self.names)

    @property
    def n_atoms(self) -> int:
        return len(self.atom_area)

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays, in bytes."""
        arrays = (self.pixel_atom, self.image_atom_ptr, self.image_atoms, self.atom_ptr)
        more = (self.atom_concepts, self.atom_area, self.concept_ptr, self.concept_atoms)
        return sum(a.nbytes for a in (*arrays, *more, self.concept_area))

    @classmethod
    def from_images(
        cls, images: Iterable[ImageConcepts], names: Sequence[str], label_size: int
    ) -> ConceptMasks:
        """From each image's list of (concept id, mask) (see :data:`ImageConcepts`)."""
        builder = ConceptMasksBuilder(names, label_size)
        for entries in images:
            builder.add(entries)
        return builder.finish()

    @classmethod
    def from_dense(cls, masks: np.ndarray, names: Sequence[str] | None = None) -> ConceptMasks:
        """From a boolean array (n_concepts, n_images, L, L): ``masks[c, i]`` is concept
        c's mask in image i. ``names`` default to ``c0``, ``c1``, ..."""
        m = np.asarray(masks, bool)
        if m.ndim != 4 or m.shape[2] != m.shape[3]:
            raise ValueError(f"expected masks of shape (concepts, images, L, L), got {m.shape}")
        C, n, L = m.shape[0], m.shape[1], m.shape[2]
        names = [f"c{c}" for c in range(C)] if names is None else names
        flat = m.reshape(C, n, L * L)
        images = (
            [(int(c), flat[c, i]) for c in np.flatnonzero(flat[:, i].any(axis=1))] for i in range(n)
        )
        return cls.from_images(images, names, L)

    def dense(self, concept: int) -> np.ndarray:
        """Concept ``concept``'s mask (n_images, L, L), boolean."""
        covered = np.zeros(self.n_atoms, bool)
        covered[self.concept_atoms[self.concept_ptr[concept] : self.concept_ptr[concept + 1]]] = 1
        L = self.label_size
        local = self.pixel_atom.astype(np.int64) + self.image_atom_ptr[:-1, None]
        return covered[self.image_atoms[local]].reshape(self.n_images, L, L)

    def leaf_atoms(self, concept: int) -> np.ndarray:
        """The atoms concept ``concept`` covers (global ids, ascending)."""
        return self.concept_atoms[self.concept_ptr[concept] : self.concept_ptr[concept + 1]]

    def counts(self, atoms: np.ndarray) -> tuple[int, np.ndarray]:
        """For the set F of pixels on the atoms ``atoms`` (distinct ids): (|F|, |F ∩ c| for
        every concept c), int64."""
        which, pos = gather_rows(self.atom_ptr, atoms)
        area = self.atom_area[atoms]
        inter = weighted_counts(self.atom_concepts[pos], area[which], self.n_concepts)
        return int(area.sum()), inter

    def unit_atoms(self, unit: UnitMask) -> UnitAtoms:
        """The unit's active pixels by atom (:class:`UnitAtoms`)."""
        n, P = self.pixel_atom.shape
        if len(unit) and (
            unit.image.min() < 0 or unit.image.max() >= n or unit.pixel.min() < 0
            or unit.pixel.max() >= P
        ):  # fmt: skip
            raise ValueError(
                f"unit {unit.unit}: active pixels outside the {n} images of {P} pixels "
                f"(images {unit.image.min()}..{unit.image.max()}, pixels "
                f"{unit.pixel.min()}..{unit.pixel.max()})"
            )
        local = self.pixel_atom[unit.image, unit.pixel].astype(np.int64)
        glob = self.image_atoms[self.image_atom_ptr[unit.image] + local]
        hits = np.bincount(glob, minlength=self.n_atoms)
        atoms = np.flatnonzero(hits)
        return self.unit_atoms_from_counts(unit.unit, atoms, hits[atoms])

    def unit_atoms_from_counts(self, unit: int, atoms: np.ndarray, weight: np.ndarray) -> UnitAtoms:
        """A unit's :class:`UnitAtoms` from its pixel counts per atom: ``atoms`` (distinct
        global atom ids, ascending) and ``weight[k]`` (> 0), the unit's active pixels on
        atom ``atoms[k]``. For counts accumulated without keeping the pixels
        (:mod:`broden.dissect.explain.collect`)."""
        atoms = np.asarray(atoms, np.int64).ravel()
        weight = np.asarray(weight, np.int64).ravel()
        ordered = not len(atoms) or bool(
            atoms[0] >= 0 and atoms[-1] < self.n_atoms and np.all(np.diff(atoms) > 0)
        )
        if atoms.shape != weight.shape or not ordered:
            raise ValueError(
                f"unit {unit}: {len(atoms)} atom ids for {len(weight)} counts; expected one "
                f"count per distinct atom id, ascending, in 0..{self.n_atoms - 1}"
            )
        which, pos = gather_rows(self.atom_ptr, atoms)
        concept = self.atom_concepts[pos]
        order = np.argsort(concept, kind="stable")
        pair_local, pair_concept = which[order], concept[order]
        C = self.n_concepts
        ptr = np.zeros(C + 1, np.int64)
        np.cumsum(np.bincount(pair_concept, minlength=C), out=ptr[1:])
        pair_weight = weight[pair_local]
        return UnitAtoms(
            unit=int(unit),
            atoms=atoms,
            weight=weight,
            pair_local=pair_local,
            pair_concept=pair_concept,
            pair_weight=pair_weight,
            concept_ptr=ptr,
            size=int(weight.sum()),
            concept_inter=weighted_counts(pair_concept, pair_weight, C),
        )


class ConceptMasksBuilder:
    """Builds :class:`ConceptMasks` image by image: :meth:`add` each image's concept
    masks in image order, then :meth:`finish`.

    Per image, each pixel's label set is packed into bits (one per concept present in
    the image, 64 to a word) and the distinct words are the image's local atoms; each
    local atom's set (with the image's whole-image labels added) is looked up in a
    dictionary of the dataset's atoms. A concept listed twice in an image covers the
    union of its masks.
    """

    def __init__(self, names: Sequence[str], label_size: int) -> None:
        self.names = tuple(str(x) for x in names)
        self.label_size = int(label_size)
        self._index: dict[tuple[int, ...], int] = {}
        self._sets: list[tuple[int, ...]] = []
        self._rows: list[np.ndarray] = []
        self._image_atoms: list[np.ndarray] = []
        self._local_area: list[np.ndarray] = []
        # an image has at most L² label sets: local atom ids fit uint16 for L ≤ 256
        self._dtype = np.uint16 if self.label_size**2 <= 2**16 else np.uint32

    def _pixels(self, concept: int, mask: np.ndarray) -> np.ndarray:
        P = self.label_size**2
        m = np.asarray(mask)
        if m.dtype == bool:
            if m.size != P:
                raise ValueError(
                    f"concept {concept}: a boolean mask of {m.size} pixels; expected "
                    f"{self.label_size}×{self.label_size} = {P}"
                )
            return np.flatnonzero(m.ravel())
        idx = m.astype(np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= P):
            raise ValueError(
                f"concept {concept}: pixel indices {idx.min()}..{idx.max()}; expected "
                f"flat indices in 0..{P - 1} of a {self.label_size}×{self.label_size} mask"
            )
        return idx

    def add(self, entries: ImageConcepts) -> None:
        """Add the next image: its (concept id, mask) pairs (see :data:`ImageConcepts`)."""
        C, P = len(self.names), self.label_size**2
        whole: set[int] = set()
        pixel_entries: list[tuple[int, np.ndarray]] = []
        for concept, mask in entries:
            c = int(concept)
            if not 0 <= c < C:
                raise ValueError(f"concept id {c}; expected 0..{C - 1} ({C} concept names)")
            if mask is None:
                whole.add(c)
            else:
                pixel_entries.append((c, self._pixels(c, mask)))
        present = sorted({c for c, _ in pixel_entries})
        bit = {c: k for k, c in enumerate(present)}
        words = np.zeros((max(1, (len(present) + 63) // 64), P), np.uint64)
        for c, idx in pixel_entries:
            k = bit[c]
            words[k // 64, idx] |= np.uint64(1) << np.uint64(k % 64)
        if len(words) == 1:
            sig, inverse = np.unique(words[0], return_inverse=True)
            sig = sig[:, None]
        else:
            view = np.ascontiguousarray(words.T).view(np.dtype((np.void, 8 * len(words))))
            _, first, inverse = np.unique(view.ravel(), return_index=True, return_inverse=True)
            sig = words.T[first]
        shifts = np.arange(64, dtype=np.uint64)
        bits = ((sig[:, :, None] >> shifts) & np.uint64(1)).astype(bool).reshape(len(sig), -1)
        present_arr = np.array(present, np.int64)
        glob = np.empty(len(sig), np.int64)
        for j, row in enumerate(bits[:, : len(present)]):
            key = tuple(sorted(whole.union(present_arr[row].tolist())))
            g = self._index.get(key)
            if g is None:
                g = self._index[key] = len(self._sets)
                self._sets.append(key)
            glob[j] = g
        self._rows.append(inverse.ravel().astype(self._dtype))
        self._image_atoms.append(glob)
        self._local_area.append(np.bincount(inverse.ravel(), minlength=len(sig)))

    @property
    def n_images(self) -> int:
        """Images added so far."""
        return len(self._rows)

    def pixel_atoms(self, image: int) -> np.ndarray:
        """The global atom id of every pixel (L², int64) of the ``image``-th image added;
        ids never change as more images are added."""
        return self._image_atoms[image][self._rows[image]]

    def finish(self) -> ConceptMasks:
        """The concept masks of the images added so far."""
        n, L, C = len(self._rows), self.label_size, len(self.names)
        if n * L * L >= 2**53:
            raise ValueError(f"{n} images of {L}×{L} pixels: too many pixels to count exactly")
        ptr = np.zeros(n + 1, np.int64)
        np.cumsum([len(a) for a in self._image_atoms], out=ptr[1:])
        pixel_atom = np.stack(self._rows) if n else np.zeros((0, L * L), self._dtype)
        image_atoms = np.concatenate(self._image_atoms) if n else np.zeros(0, np.int64)
        A = len(self._sets)
        local_area = np.concatenate(self._local_area) if n else np.zeros(0, np.int64)
        atom_area = weighted_counts(image_atoms, local_area, A)
        lens = np.array([len(s) for s in self._sets], np.int64)
        atom_ptr = np.zeros(A + 1, np.int64)
        np.cumsum(lens, out=atom_ptr[1:])
        atom_concepts = np.fromiter(
            (c for s in self._sets for c in s), np.int64, count=int(atom_ptr[-1])
        )
        pair_atom = np.repeat(np.arange(A, dtype=np.int64), lens)
        order = np.argsort(atom_concepts, kind="stable")
        concept_ptr = np.zeros(C + 1, np.int64)
        np.cumsum(np.bincount(atom_concepts, minlength=C), out=concept_ptr[1:])
        return ConceptMasks(
            names=self.names,
            label_size=L,
            pixel_atom=pixel_atom,
            image_atom_ptr=ptr,
            image_atoms=image_atoms.astype(np.int64),
            atom_ptr=atom_ptr,
            atom_concepts=atom_concepts,
            atom_area=atom_area,
            concept_ptr=concept_ptr,
            concept_atoms=pair_atom[order],
            concept_area=weighted_counts(atom_concepts, atom_area[pair_atom], C),
        )
