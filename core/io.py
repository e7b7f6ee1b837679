"""Robust image reading for files that users bring.

``read_image`` turns almost anything that looks like a picture into an RGB ``uint8`` array
``(H, W, 3)`` and a list of human-readable notes about what it had to do on the way (EXIF
rotation, transparency, bit depth, resizing). Anything it cannot turn into a picture raises
``ImageReadError`` with a one-sentence message that can be shown to a user as is.

Conversion rules (documented here once, tested in ``tests/data/test_io.py``):

- EXIF orientation is applied (``PIL.ImageOps.exif_transpose``); multi-frame files use frame 0.
- Transparency (RGBA, LA, PA, palette with a transparent colour, 4-channel or 2-channel arrays)
  is composited on white.
- 16-bit data (PIL modes ``I;16*``, ``uint16`` arrays) is scaled by the full 16-bit range
  (``v / 65535 * 255``), so that a photo saved with 16 bits keeps its brightness. 32-bit
  integer data (PIL mode ``I``, ``int32``/``int64`` arrays) whose values fit in 0..255 is used
  as is, in 0..65535 it is treated as 16-bit, and anything else is stretched from its
  actual minimum..maximum.
- Floating-point data in [0, 1] is multiplied by 255; data in [0, 255] is used as is; any
  other range is stretched from its actual minimum..maximum. NaN and inf become 0.
- Boolean data maps False/True to 0/255.
- CMYK (including Adobe's inverted CMYK JPEGs, which PIL decodes) and other colour spaces are
  converted by PIL.
- Images whose longer side exceeds ``max_side`` are downscaled with area interpolation (JPEGs
  are first decoded at a reduced scale with ``draft``, which is much faster and lighter).
- Images smaller than ``MIN_SIDE`` pixels on a side are upscaled (bilinear) so that the encoders
  get at least a few tokens.
- Files with more than ``MAX_PIXELS`` pixels are refused before decoding (PIL's decompression
  bomb guard), with an ``ImageReadError``.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import warnings
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import UserError, existing_file

MIN_SIDE = 32
# PIL refuses files above twice its MAX_IMAGE_PIXELS (about 179 MP) as decompression bombs. We keep
# that limit (without changing PIL's global setting) and turn its error into an ImageReadError.
MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)

_EXIF_ERRORS = (OSError, ValueError, SyntaxError, KeyError, TypeError, IndexError, struct.error)

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray


@functools.lru_cache(maxsize=4)
def _voc_palette(n: int) -> np.ndarray:
    palette = np.zeros((n, 3), dtype=np.uint8)
    for idx in range(n):
        c, r, g, b = idx, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[idx] = (r, g, b)
    palette.flags.writeable = False
    return palette


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: ``(n, 3)`` uint8, class id -> RGB (bit-interleaved ids)."""
    return _voc_palette(n).copy()


class ImageReadError(UserError, ValueError):
    """The input is not an image we can read; the message is one sentence for the user."""


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    return "the given data"


def _open_pil(source: Any) -> Image.Image:
    """Open a path / bytes / file object with PIL, turning every failure into ImageReadError."""
    what = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        fp: Any = str(existing_file(source, ImageReadError, "the image file"))
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageReadError("the given data is empty (0 bytes).")
        fp = io.BytesIO(bytes(source))
    else:  # a file-like object
        fp = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"{what} is too large to decode safely ({exc}); reduce it below {MAX_PIXELS:,} pixels."
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{what} is not an image PIL can read (unknown or unsupported format).") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{what} could not be opened as an image ({exc}).") from exc
    if img.width * img.height > MAX_PIXELS:
        raise ImageReadError(
            f"{what} is too large to decode safely ({img.width}x{img.height} pixels, limit {MAX_PIXELS:,})."
        )
    if img.width == 0 or img.height == 0:
        raise ImageReadError(f"{what} has zero size ({img.width}x{img.height}).")
    return img


def _scale_to_uint8(arr: np.ndarray, notes: list[str]) -> np.ndarray:
    """Any numeric array -> uint8 by the rules of the module docstring."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.complexfloating) or not np.issubdtype(arr.dtype, np.number):
        raise ImageReadError(f"an array of dtype {arr.dtype} is not an image (expected numbers).")
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
        finite = np.isfinite(arr)
        if not finite.all():
            notes.append("replaced NaN/inf values with 0")
            arr = np.where(finite, arr, 0.0)
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            notes.append("float image in [0, 1] scaled to 0-255")
            return np.round(arr * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0:
            return np.round(arr).astype(np.uint8)
        notes.append(f"float image with range [{lo:.3g}, {hi:.3g}] stretched to 0-255")
        return _stretch(arr, lo, hi)
    lo, hi = int(arr.min()), int(arr.max())
    if arr.dtype == np.uint16 or (arr.dtype.itemsize > 1 and lo >= 0 and 255 < hi <= 65535):
        notes.append("16-bit image scaled to 8 bits (by the full 16-bit range)")
        return np.round(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return arr.astype(np.uint8)
    notes.append(f"integer image with range [{lo}, {hi}] stretched to 0-255")
    return _stretch(arr.astype(np.float64), lo, hi)


def _stretch(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray, notes: list[str]) -> np.ndarray:
    """``rgb (H, W, 3)`` uint8, ``alpha (H, W)`` uint8 -> RGB uint8 over a white background."""
    if alpha.min() == 255:
        return rgb
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    notes.append("transparent image composited on white")
    return np.round(out).astype(np.uint8)


def _array_to_rgb(arr: np.ndarray, notes: list[str]) -> np.ndarray:
    """A numpy array (H, W), (H, W, 1|2|3|4) of any numeric dtype -> RGB uint8 (H, W, 3)."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (2, 3, 4)):
        raise ImageReadError(
            f"an array of shape {tuple(arr.shape)} is not an image (expected (H, W), (H, W, 1), "
            "(H, W, 3) or (H, W, 4))."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(f"the image has zero size ({arr.shape[1]}x{arr.shape[0]}).")
    alpha = None
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        alpha_notes: list[str] = []
        alpha = _scale_to_uint8(arr[..., -1], alpha_notes)
        arr = arr[..., :-1]
    arr = _scale_to_uint8(arr, notes)
    if arr.ndim == 2 or arr.shape[2] == 1:
        if arr.ndim == 3:
            arr = arr[..., 0]
        notes.append("grayscale image converted to RGB")
        arr = np.repeat(arr[..., None], 3, axis=2)
    if alpha is not None:
        arr = _composite_on_white(arr, alpha, notes)
    return np.ascontiguousarray(arr)


def _pil_to_rgb(img: Image.Image, notes: list[str]) -> np.ndarray:
    """A PIL image of any mode -> RGB uint8 ``(H, W, 3)``."""
    if getattr(img, "n_frames", 1) > 1:
        notes.append(f"file has {img.n_frames} frames; using the first")
        img.seek(0)
    try:
        orientation = img.getexif().get(0x0112, 1)
    except _EXIF_ERRORS:  # a broken EXIF block is not worth refusing the picture for
        orientation = 1
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"the image is too large to decode safely ({exc}).") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(f"the image file is truncated or corrupt ({exc}).") from exc
    if orientation not in (None, 1):
        try:
            img = ImageOps.exif_transpose(img)
            notes.append(f"rotated according to its EXIF orientation ({orientation})")
        except _EXIF_ERRORS:
            notes.append("could not apply the EXIF orientation; using the stored pixels")
    mode = img.mode
    if mode == "P":
        if "transparency" in img.info:
            img = img.convert("RGBA")
            mode = "RGBA"
        else:
            return np.asarray(img.convert("RGB"))
    if mode == "PA":
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBa", "La"):
        img = img.convert("RGBA" if mode == "RGBa" else "LA")
        mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode in ("RGBA", "LA"):
        return _array_to_rgb(np.asarray(img), notes)
    if mode == "1":
        return _array_to_rgb(np.asarray(img.convert("L")), notes)
    if mode == "L":
        return _array_to_rgb(np.asarray(img), notes)
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode.startswith("I;16"):
            arr = arr.astype(np.uint16)
        return _array_to_rgb(arr, notes)
    if mode == "CMYK":
        notes.append("converted from CMYK to RGB")
        return np.asarray(img.convert("RGB"))
    try:
        out = np.asarray(img.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise ImageReadError(f"images of mode {mode} cannot be converted to RGB ({exc}).") from exc
    notes.append(f"converted from {mode} to RGB")
    return out


def _fit_size(
    rgb: np.ndarray, max_side: int | None, notes: list[str], decoded_from: tuple[int, int] | None = None
) -> np.ndarray:
    """Downscale to ``max_side`` / upscale to ``MIN_SIDE``. ``decoded_from`` is the (W, H) of the
    file when it was already decoded at a reduced scale (JPEG draft), for the note."""
    h, w = rgb.shape[:2]
    src_w, src_h = decoded_from or (w, h)
    if max_side is not None and max(h, w) > max_side:
        s = max_side / max(h, w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
        h, w = nh, nw
    if (src_w, src_h) != (w, h):
        notes.append(f"downscaled from {src_w}x{src_h} to {w}x{h}")
    if min(h, w) < MIN_SIDE:
        s = MIN_SIDE / min(h, w)
        nw, nh = max(MIN_SIDE, round(w * s)), max(MIN_SIDE, round(h * s))
        if max_side is not None and max(nw, nh) > max(max_side, MIN_SIDE):
            # an extreme aspect ratio cannot keep its shape: clamp the long side
            limit = max(max_side, MIN_SIDE)
            nw, nh = min(nw, limit), min(nh, limit)
            notes.append("extreme aspect ratio: the aspect ratio was not kept")
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
        notes.append(f"upscaled from {w}x{h} to {nw}x{nh} (images need at least {MIN_SIDE} px a side)")
    return np.ascontiguousarray(rgb)


def read_image(source: ImageSource | Any, max_side: int | None = 1024) -> tuple[np.ndarray, list[str]]:
    """Read an image from a path, bytes, a file object, a PIL image or a numpy array.

    Returns ``(rgb, notes)``: ``rgb`` uint8 ``(H, W, 3)`` with ``max(H, W) <= max_side`` (unless
    ``max_side`` is None) and ``min(H, W) >= MIN_SIDE``; ``notes`` lists what was converted.
    Raises ``ImageReadError`` for anything that is not a readable image.
    """
    notes: list[str] = []
    decoded_from = None
    if isinstance(source, np.ndarray):
        rgb = _array_to_rgb(source, notes)
    elif isinstance(source, Image.Image):
        if source.width == 0 or source.height == 0:
            raise ImageReadError(f"the image has zero size ({source.width}x{source.height}).")
        rgb = _pil_to_rgb(source, notes)
    elif source is None:
        raise ImageReadError("no image was given.")
    else:
        if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) and not hasattr(
            source, "read"
        ):
            raise ImageReadError(f"an object of type {type(source).__name__} is not an image.")
        img = _open_pil(source)
        try:
            file_size = img.size
            if img.format == "JPEG" and max_side is not None and max(img.size) > 2 * max_side:
                # decode at 1/2, 1/4 or 1/8 scale, never below what we need
                target = max_side / max(img.size)
                img.draft("RGB", (max(1, int(img.width * target)), max(1, int(img.height * target))))
            decoded_size = img.size
            try:
                rgb = _pil_to_rgb(img, notes)
            except ImageReadError as exc:
                raise ImageReadError(f"{_describe(source)}: {exc}") from exc
        finally:
            img.close()
        if decoded_size != file_size:
            rotated = (rgb.shape[1], rgb.shape[0]) != decoded_size  # EXIF turned it by 90 degrees
            decoded_from = (file_size[1], file_size[0]) if rotated else file_size
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError("the image has zero size.")
    return _fit_size(rgb, max_side, notes, decoded_from), notes


_END_MARKERS = {b"\xff\xd8": b"\xff\xd9", b"\x89PNG\r\n\x1a\n": b"IEND\xaeB`\x82"}  # JPEG, PNG


def cut_short(data: bytes) -> bool:
    """True when encoded JPEG or PNG ``data`` stops before the end of its image (a file cut short
    by a failed copy or download; some decoders fill the rest with grey and carry on). Bytes after
    a complete image are allowed: when the end marker is not last, PIL decodes the file to decide.
    Other formats: False (their decoders fail on truncation)."""
    end = next((e for start, e in _END_MARKERS.items() if data.startswith(start)), None)
    if end is None or data.rstrip(b"\0\r\n ").endswith(end):
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError):
        return True
    return False


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as class ids: uint8 ``(H, W)`` (0 background, 255 ignore).

    Palette PNGs give their palette indices (not their colours); grayscale PNGs their values.
    An RGB mask is accepted only if every colour is in the VOC colour map (then mapped back to
    ids); anything else raises ``ImageReadError``.
    """
    img = _open_pil(path)
    with img:
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageReadError(f"the mask '{os.fspath(path)}' is truncated or corrupt ({exc}).") from exc
        if img.mode in ("P", "L"):
            return np.array(img, dtype=np.uint8)
        if img.mode.startswith("I") or img.mode == "1":
            arr = np.asarray(img).astype(np.int64)
            if arr.min() < 0 or arr.max() > 255:
                raise ImageReadError(
                    f"the mask '{os.fspath(path)}' has values outside 0..255 ({arr.min()}..{arr.max()})."
                )
            return arr.astype(np.uint8)
        if img.mode in ("RGB", "RGBA"):
            rgb = np.asarray(img.convert("RGB")).astype(np.int64)
            palette = voc_palette().astype(np.int64)
            code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            pal_code = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
            # the first 22 entries (0..21) and 255 are the ones VOC uses; map by code
            lookup = {int(c): i for i, c in reversed(list(enumerate(pal_code)))}
            uniq, inverse = np.unique(code, return_inverse=True)
            ids = np.array([lookup.get(int(c), -1) for c in uniq])
            if (ids < 0).any():
                raise ImageReadError(
                    f"the mask '{os.fspath(path)}' is an RGB image whose colours are not VOC class "
                    "colours; save masks as palette or grayscale PNGs of class ids."
                )
            return ids[inverse].reshape(code.shape).astype(np.uint8)
        raise ImageReadError(f"the mask '{os.fspath(path)}' has unsupported mode {img.mode}.")
