"""Decoding image files to uint8 BGR ``(H, W, 3)``: the one decoder of proposals, mappers and tools.

One rule per kind of image, whichever library decodes the file:

- **EXIF orientation**: applied, so pixels (and sizes) are in the frame Detectron2's
  ``read_image`` returns; :func:`image_header` reports the size in that frame.
- **Grayscale** (one channel, 8 or 16 bits): replicated to three channels.
- **Alpha** (RGBA, LA, palette with transparency): dropped; the colours are kept as stored,
  not composited onto a background.
- **Palette**: expanded to its colours.
- **CMYK** (JPEG): converted to RGB by the decoding library (no colour profile applied).
- **16-bit** integer: the high byte, ``v >> 8`` (256 equal bins: 0..255 -> 0,
  65280..65535 -> 255). OpenCV (``IMREAD_COLOR``) and Pillow (16-bit RGB PNG) already reduce
  16-bit images this way; Pillow's 16-bit grayscale modes are reduced here by the same rule.
- **32-bit** integer or float (Pillow modes ``I`` and ``F``): there is no standard full range,
  so the image's own min..max is stretched to 0..255, rounded (a constant image becomes 0).
- **8-bit colour**: as stored.

Two entry points, because two jobs need different things:

- :func:`decode_image` (bytes, for the training mappers): OpenCV first, the fastest, with
  JPEGs decoded at 1/2, 1/4 or 1/8 of their size by DCT scaling when asked; Pillow for the
  formats OpenCV does not read.
- :func:`read_image` (a path, for the proposal job): Pillow first, because it rejects
  truncated JPEGs (which ``cv2.imread`` may fill with grey), with JPEGs decoded at the smallest
  DCT scale the caller still needs; OpenCV for the files Pillow cannot identify. Every reason
  an image is refused is a short tag, listed in the job's failures report.

Both raise :class:`ImageReadError`.
"""
import io
import os
from typing import Callable, Optional, Tuple

import cv2
import numpy as np

__all__ = ["ImageReadError", "to_bgr8", "image_header", "decode_image", "read_image"]

_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
_EXIF_ORIENTATION = 0x0112
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees
_PIL_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageReadError(ValueError):
    """An image that cannot be used. ``reason`` is a short machine-friendly tag: "missing",
    "empty_file", "unreadable", "decode_error" (here), "tiny" (proposals)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def to_bgr8(arr: np.ndarray) -> np.ndarray:
    """A decoded array (gray, or colour in BGR(A) order; any depth) -> uint8 HxWx3 BGR, by the
    rules of the module docstring."""
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:  # 32-bit int or float images: stretch their own range
        a = arr.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        arr = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if arr.ndim == 2 or arr.shape[2] == 1:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    if arr.shape[2] == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(arr[:, :, :3])


def _display_size(im) -> Tuple[int, int]:
    """(width, height) of an open Pillow image once its EXIF orientation is applied."""
    w, h = im.size
    return (h, w) if im.getexif().get(_EXIF_ORIENTATION, 1) in _ROTATED else (w, h)


def _pil_to_bgr8(im) -> np.ndarray:
    """A loaded Pillow image -> uint8 BGR, EXIF orientation applied."""
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in _PIL_16BIT_MODES:
        return to_bgr8(np.asarray(im).astype(np.uint16))
    if im.mode in ("I", "F"):
        return to_bgr8(np.asarray(im))
    return to_bgr8(np.asarray(im.convert("RGB"))[:, :, ::-1])


def image_header(data: bytes) -> Optional[Tuple[int, int, bool]]:
    """``(width, height, is_jpeg)`` of an encoded image after EXIF orientation, read from its
    header only; None when Pillow cannot identify the format."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return (*_display_size(im), im.format == "JPEG")
    except (UnidentifiedImageError, OSError, SyntaxError):
        return None


def decode_image(data: bytes, reduce: int = 1) -> np.ndarray:
    """Decode encoded bytes to uint8 BGR (H, W, 3): OpenCV, else Pillow (module docstring).

    Args:
        data: the file's bytes.
        reduce: 1, 2, 4 or 8; a JPEG is decoded at that fraction of its size (DCT scaling).

    Raises:
        ImageReadError: empty data ("empty_file"), or neither library can decode it
            ("unreadable").
    """
    if len(data) == 0:
        raise ImageReadError("empty_file", "0 bytes")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS[reduce])
    except cv2.error as e:
        raise ImageReadError("unreadable", f"cannot decode image ({e})") from e
    if img is not None:
        return to_bgr8(img)
    from PIL import Image  # a format OpenCV does not read: let Pillow try

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _pil_to_bgr8(im)
    except Exception as e:
        raise ImageReadError("unreadable", f"cannot decode image ({e})") from e


def read_image(
    path: str, min_scale: Optional[Callable[[int, int], float]] = None
) -> Tuple[np.ndarray, int, int]:
    """Decode the file ``path`` to uint8 BGR: Pillow, else OpenCV (module docstring).

    Args:
        path: image file.
        min_scale: ``(W, H) -> s <= 1``, the smallest scale of the full image the caller needs;
            a JPEG is then decoded at the smallest DCT scale that is still at least ``s``
            (Pillow's draft mode). None: full size.

    Returns:
        ``(image, W, H)``: W x H is the size of the full image (EXIF orientation applied);
        ``image`` is smaller than that when it was decoded at a reduced scale.

    Raises:
        ImageReadError: missing file ("missing"), empty file ("empty_file"), a file that cannot
            be read or that neither library identifies ("unreadable"), undecodable or truncated
            data ("decode_error").
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise ImageReadError("missing", path)
    try:
        if os.path.getsize(path) == 0:
            raise ImageReadError("empty_file", "0 bytes")
    except OSError as e:
        raise ImageReadError("unreadable", str(e)) from e
    try:
        with Image.open(path) as im:
            w0, h0 = _display_size(im)
            s = 1.0 if min_scale is None else min_scale(w0, h0)
            if im.format == "JPEG" and s < 1:  # decode at a reduced scale still >= the target
                im.draft("RGB", (int(np.ceil(im.size[0] * s)), int(np.ceil(im.size[1] * s))))
            im.load()
            return _pil_to_bgr8(im), int(w0), int(h0)
    except UnidentifiedImageError:
        pass  # maybe a format only OpenCV reads
    except (OSError, ValueError, SyntaxError) as e:  # truncated / corrupt data
        raise ImageReadError("decode_error", f"{type(e).__name__}: {e}") from e
    arr = cv2.imread(path, cv2.IMREAD_COLOR)
    if arr is None:
        raise ImageReadError("unreadable", "neither PIL nor OpenCV can decode it")
    return to_bgr8(arr), int(arr.shape[1]), int(arr.shape[0])
