"""Opening a source's files within bounds: only regular files, only inside the source's
folders, and images only up to a pixel limit read from the header before any pixel is
allocated (:mod:`broden.adapters.decode` applies the limit).

The limits in force are a :class:`ReadLimits` set for a block of work with
:func:`reading` (the build sets one per source: its folders as the roots, the config's
``max_image_pixels`` and ``allow_outside_links``); outside such a block the default
applies: the pixel limit, regular files only, no root check.

- **Regular files only.** A file is opened without blocking (``O_NONBLOCK``, so a FIFO
  with no writer cannot hang the build) and checked with ``fstat`` on the open handle: a
  FIFO, device or socket is refused unread.
- **Inside the roots.** The path, with every symbolic link resolved, must lie inside one
  of the roots (themselves resolved): a link that points elsewhere, or a path taken from
  an annotation file (a DTD index line, a COCO ``file_name``, a legacy CSV) that climbs
  out with ``..``, is refused, unless ``allow_outside_links``.

>>> with reading(ReadLimits.for_roots([Path("data/dtd")], max_image_pixels=50_000_000)):
...     data = read_regular(Path("data/dtd/images/banded/banded_0002.jpg"))  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from broden.adapters.base import SampleError

#: Pillow's default decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``): about a
#: quarter gigapixel, 0.5 GB of RGB
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970


@dataclass(frozen=True)
class ReadLimits:
    """What a source may open: images of at most ``max_image_pixels`` pixels, files inside
    ``roots`` (resolved; empty: anywhere) unless ``allow_outside_links``."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    roots: tuple[Path, ...] = ()
    allow_outside_links: bool = False

    @classmethod
    def for_roots(
        cls,
        roots: Sequence[Path],
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        allow_outside_links: bool = False,
    ) -> ReadLimits:
        """Limits for a source whose files live under ``roots`` (folders or files)."""
        resolved = tuple(dict.fromkeys(Path(os.path.realpath(r)) for r in roots))
        return cls(max_image_pixels, resolved, allow_outside_links)


_LIMITS: ContextVar[ReadLimits] = ContextVar("broden_read_limits", default=ReadLimits())  # noqa: B039 - frozen


def current_limits() -> ReadLimits:
    """The limits in force (the innermost :func:`reading` block's, or the default)."""
    return _LIMITS.get()


@contextmanager
def reading(limits: ReadLimits) -> Iterator[ReadLimits]:
    """Apply ``limits`` to every source file opened in the block (this thread or task)."""
    token = _LIMITS.set(limits)
    try:
        yield limits
    finally:
        _LIMITS.reset(token)


class RefusedFile(OSError):
    """A source file not opened: not a regular file, or outside the source's folders. An
    :class:`OSError`, so readers that report ``OSError.strerror`` report it too."""

    def __init__(self, path: Path, why: str):
        super().__init__(errno.EPERM, why, str(path))


def check_inside(path: Path, limits: ReadLimits | None = None) -> None:
    """Raise :class:`RefusedFile` if ``path`` resolves outside the roots of ``limits``
    (default: those in force)."""
    limits = current_limits() if limits is None else limits
    if not limits.roots or limits.allow_outside_links:
        return
    real = Path(os.path.realpath(path))
    if any(real == r or real.is_relative_to(r) for r in limits.roots):
        return
    how = "a symbolic link to" if real != Path(os.path.abspath(path)) else "a path to"
    raise RefusedFile(
        path,
        f"{how} {real}, outside the source's folders "
        f"({', '.join(str(r) for r in limits.roots)}); refused (allow_outside_links: true in "
        "the config reads it)",
    )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def file_bytes(path: Path) -> bytes:
    """The bytes of ``path``, a regular file inside the roots in force. Raises
    :class:`OSError` as reading would (``FileNotFoundError``, ``PermissionError``, ...),
    or :class:`RefusedFile` for a FIFO, device, socket or folder (never read) or a path
    outside the roots."""
    check_inside(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(st.st_mode):
            raise RefusedFile(path, f"{_kind(st.st_mode)}, not a file; not read")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def file_text(path: Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """:func:`file_bytes` decoded (``UnicodeDecodeError`` as ``Path.read_text`` raises)."""
    return file_bytes(path).decode(encoding, errors)


def open_text(path: Path, encoding: str = "utf-8") -> io.StringIO:
    """:func:`file_text` as a file object for ``csv`` (newlines kept as in the file, as
    ``open(path, newline="")`` gives them)."""
    text = file_text(path, encoding)
    return io.StringIO(text, newline="")


def sample_error(path: Path, error: OSError) -> SampleError:
    """The :class:`SampleError` naming ``path`` for an :class:`OSError` reading it."""
    if isinstance(error, FileNotFoundError):
        return SampleError(f"{path}: file is missing")
    if isinstance(error, RefusedFile):
        return SampleError(f"{path}: {error.strerror}")
    return SampleError(f"{path}: cannot read ({error.strerror})")


def read_regular(path: Path) -> bytes:
    """:func:`file_bytes` with :class:`SampleError` naming the file for every problem
    (missing, unreadable, a FIFO or device, outside the roots): a sample's file."""
    try:
        return file_bytes(path)
    except OSError as e:
        raise sample_error(path, e) from None


def check_regular(path: Path) -> None:
    """Raise :class:`SampleError` unless ``path`` is a regular file inside the roots in
    force (for readers that open the file themselves, e.g. ``scipy.io.loadmat``)."""
    try:
        check_inside(path)
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise RefusedFile(path, f"{_kind(st.st_mode)}, not a file; not read")
    except OSError as e:
        raise sample_error(path, e) from None
