"""Decoding source files into arrays, with errors that name the file and the problem.

Every file is opened through :func:`~broden.adapters.files.read_regular` (regular files
inside the source's folders only), and every image's width and height are read from its
header (Pillow's lazy open: no pixel data) and checked against the pixel limit in force
(:class:`~broden.adapters.files.ReadLimits`, ``max_image_pixels``) before either decoder
allocates anything. A file whose header Pillow cannot read is refused: its size cannot be
checked before decoding.

OpenCV decodes fastest but silently returns a half-grey picture for a truncated
JPEG, so :func:`read_image` first checks the JPEG end-of-image marker and asks
Pillow, which raises on truncation, whenever the marker is absent. EXIF
orientation is ignored: annotations are drawn on the stored pixel grid.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from broden.adapters.base import SampleError
from broden.adapters.files import check_regular, current_limits, read_regular

_COLOR_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def _read_bytes(path: Path) -> bytes:
    data = read_regular(path)
    if not data:
        raise SampleError(f"{path}: file is empty")
    return data


def check_pixels(path: Path, data: bytes) -> tuple[int, int]:
    """The image's (width, height) from its header, before any pixel is decoded;
    :class:`SampleError` if it has more pixels than the limit in force, or if its header
    cannot be read."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    limit = current_limits().max_image_pixels
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # Pillow's own check must not refuse below ours
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Image.DecompressionBombError as e:
        raise SampleError(f"{path}: over the pixel limit of {limit:,} ({e}); skipped") from None
    except UnidentifiedImageError:
        raise SampleError(f"{path}: not an image file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise SampleError(f"{path}: truncated or corrupt image header ({e})") from None
    if w * h > limit:
        raise SampleError(
            f"{path}: {w}×{h} = {w * h:,} pixels, over the limit of {limit:,} "
            "(max_image_pixels); not decoded"
        )
    return w, h


def _jpeg_is_complete(data: bytes) -> bool:
    # Entropy-coded data never holds FF D9 (FF is always stuffed), so a complete
    # file ends with the EOI marker, possibly followed by padding.
    return data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9"


def _pillow_rgb(path: Path, data: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise SampleError(f"{path}: not an image file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise SampleError(f"{path}: truncated or corrupt image ({e})") from None


def read_image(path: Path) -> np.ndarray:
    """Read a photo as H×W×3 uint8 RGB (grey and CMYK images converted)."""
    data = _read_bytes(path)
    check_pixels(path, data)
    if data[:2] == b"\xff\xd8" and not _jpeg_is_complete(data):
        return _pillow_rgb(path, data)  # decides: raises on truncation, else decodes
    im = cv2.imdecode(np.frombuffer(data, np.uint8), _COLOR_FLAGS)
    if im is None:
        return _pillow_rgb(path, data)  # formats OpenCV lacks; raises with Pillow's reason
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)


def read_png(path: Path) -> np.ndarray:
    """Read a label PNG unchanged: H×W (grey or palette indices) or H×W×3 RGB, uint8/uint16.

    Palette PNGs keep their indices (read with Pillow); RGBA loses alpha.
    """
    data = _read_bytes(path)
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SampleError(f"{path}: not a PNG file")
    check_pixels(path, data)
    if _png_color_type(data) == 3:  # palette: the indices are the labels
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return np.asarray(im)
        except (OSError, SyntaxError, ValueError) as e:
            raise SampleError(f"{path}: corrupt PNG ({e})") from None
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise SampleError(f"{path}: corrupt or truncated PNG")
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return arr


def _png_color_type(data: bytes) -> int:
    # IHDR is the first chunk: 8-byte signature, 4 length, 4 type, 13 data bytes;
    # colour type is data byte 9.
    return data[25] if len(data) > 25 else -1


def read_png_rgb(path: Path) -> np.ndarray:
    """Read an RGB-encoded label PNG as H×W×3 uint8 (fails on grey or 16-bit files)."""
    arr = read_png(path)
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise SampleError(
            f"{path}: expected an 8-bit RGB PNG, got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr


def require_same_size(
    path: Path, what: str, got: tuple[int, ...], image: str, want: tuple[int, ...]
) -> None:
    """Raise :class:`SampleError` unless an annotation's H×W (``got``) equals its image's
    (``want``): a mask of another size is never resized into place."""
    if tuple(got[:2]) != tuple(want[:2]):
        raise SampleError(
            f"{path}: {what} is {got[1]}×{got[0]} but the image {image} is "
            f"{want[1]}×{want[0]} (W×H)"
        )


def load_mat(path: Path, **kwargs: Any) -> dict[str, Any]:
    """Load a MATLAB .mat file (v5/v7); v7.3 (HDF5) files get a clear error."""
    import scipy.io

    check_regular(path)
    try:
        return scipy.io.loadmat(path, **kwargs)
    except NotImplementedError:
        raise SampleError(f"{path}: MATLAB v7.3 (HDF5) files are not supported") from None
    except (ValueError, TypeError, OSError, EOFError) as e:
        raise SampleError(f"{path}: not a readable .mat file ({e})") from None
