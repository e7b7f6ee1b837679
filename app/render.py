"""Pure rendering helpers: arrays in, RGB uint8 pictures (or HTML) out.

Nothing here knows about CAMs or affinity beyond "a map of numbers" or "a map of class ids";
every value drawn was computed by ``core.analyze``. Resizing here is for display only.
"""

from __future__ import annotations

import html
from functools import lru_cache

import cv2
import numpy as np

IGNORE_ID = 255
IGNORE_COLOUR = (255, 255, 255)
DEFAULT_OPACITY = 0.55  # of every overlay until the user moves the opacity slider
THUMB_SIDE = 176  # long side of the small tiles (attention heads, PAR steps)
DISPLAY_SIDE = 384  # maps are drawn at least this long (small images enlarged by a whole factor)
# colours of the kinds of error of core.method.metrics.error_map (0 = correct: left unpainted)
ERROR_COLOURS = {1: (230, 40, 40), 2: (40, 110, 255), 3: (255, 170, 0), 4: (170, 60, 220)}


@lru_cache(maxsize=1)
def palette() -> np.ndarray:
    """``(256, 3)`` uint8 colours indexed by class id: core's PASCAL VOC palette (background (0)
    black), with ignore (255) white."""
    from core.io import voc_palette

    colours = voc_palette(256)
    colours[IGNORE_ID] = IGNORE_COLOUR
    colours.setflags(write=False)
    return colours


def colorize_labels(label: np.ndarray) -> np.ndarray:
    """``(H, W)`` class ids -> ``(H, W, 3)`` uint8 colours."""
    return palette()[np.asarray(label, dtype=np.uint8)]


def blend(
    image: np.ndarray, overlay: np.ndarray, opacity: float, mask: np.ndarray | None = None
) -> np.ndarray:
    """``image * (1 - opacity) + overlay * opacity`` (only where ``mask`` is True, if given)."""
    opacity = float(np.clip(opacity, 0.0, 1.0))
    out = cv2.addWeighted(_rgb(image), 1.0 - opacity, _rgb(overlay), opacity, 0.0)
    if mask is not None:
        out = np.where(mask[..., None], out, _rgb(image))
    return out


def overlay_labels(
    image: np.ndarray, label: np.ndarray, opacity: float = DEFAULT_OPACITY, show_background: bool = True
) -> np.ndarray:
    """Colour a label map over the image. ``show_background=False`` leaves background pixels as they are."""
    label = fit_to(label, image.shape[:2], mode="nearest")
    mask = None if show_background else label != 0
    return blend(image, colorize_labels(label), opacity, mask)


@lru_cache(maxsize=8)
def colormap_lut(name: str = "jet") -> np.ndarray:
    """``(256, 3)`` uint8 lookup table of a matplotlib colormap."""
    from matplotlib import colormaps

    cmap = colormaps[name]
    lut = (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def heatmap(
    values: np.ndarray, vmin: float | None = 0.0, vmax: float | None = 1.0, cmap: str = "jet"
) -> np.ndarray:
    """``(H, W)`` numbers -> ``(H, W, 3)`` colours; ``vmin``/``vmax`` None means the map's own range."""
    values = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(values)
    lo = float(values[finite].min()) if vmin is None and finite.any() else float(vmin or 0.0)
    hi = (
        float(values[finite].max()) if vmax is None and finite.any() else float(1.0 if vmax is None else vmax)
    )
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    index = np.clip((np.nan_to_num(values, nan=lo) - lo) * scale, 0, 255).astype(np.uint8)
    return colormap_lut(cmap)[index]


def overlay_heatmap(
    image: np.ndarray,
    values: np.ndarray,
    opacity: float = DEFAULT_OPACITY,
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    cmap: str = "jet",
    mode: str = "bilinear",
) -> np.ndarray:
    """A heat map of ``values`` (any resolution; resized for display) over ``image``."""
    values = fit_to(np.asarray(values, dtype=np.float32), image.shape[:2], mode=mode)
    return blend(image, heatmap(values, vmin, vmax, cmap), opacity)


def display_scale(shape: tuple[int, ...]) -> int:
    """The whole factor by which an image of ``shape`` is enlarged for display, so that its long
    side is at least ``DISPLAY_SIDE`` (1 for images that are already large enough)."""
    return max(1, -(-DISPLAY_SIDE // max(int(shape[0]), int(shape[1]))))


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """A photo enlarged ``factor`` times, smoothly (maps drawn over it bring their own resizing:
    nearest for class ids, bilinear for scores)."""
    if factor == 1:
        return _rgb(image)
    height, width = image.shape[:2]
    return cv2.resize(_rgb(image), (width * factor, height * factor), interpolation=cv2.INTER_CUBIC)


def for_display(image: np.ndarray) -> np.ndarray:
    """The image at its display size (see ``display_scale``)."""
    return enlarge(image, display_scale(image.shape))


def to_display(point: tuple[int, int], factor: int) -> tuple[int, int]:
    """Image pixel ``(x, y)`` -> the centre of its block in an image enlarged ``factor`` times."""
    return int(point[0]) * factor + factor // 2, int(point[1]) * factor + factor // 2


def from_display(point, factor: int) -> tuple[int, int]:
    """A pixel of an image enlarged ``factor`` times -> the image pixel it shows."""
    return int(point[0]) // factor, int(point[1]) // factor


def overlay_errors(image: np.ndarray, errors: np.ndarray, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """Paint the wrong pixels of an ``error_map`` (codes of ``ERROR_COLOURS``) over the image, which
    is greyed so that the colours stand out; correct and ignored pixels are left grey."""
    errors = fit_to(errors, image.shape[:2], mode="nearest")
    grey = cv2.cvtColor(cv2.cvtColor(_rgb(image), cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    paint = np.zeros_like(grey)
    for code, colour in ERROR_COLOURS.items():
        paint[errors == code] = colour
    return blend(grey, paint, max(opacity, 0.7), np.isin(errors, list(ERROR_COLOURS)))


def errors_legend_html(names: dict[int, str]) -> str:
    """Swatches of the error colours, ``names`` = core's ``ERROR_KINDS``."""
    items = []
    for code, (r, g, b) in ERROR_COLOURS.items():
        items.append(
            '<span style="display:inline-flex;align-items:center;margin:2px 10px 2px 0;white-space:nowrap">'
            f'<span style="width:14px;height:14px;border:1px solid #888;background:rgb({r},{g},{b});'
            f'display:inline-block;margin-right:5px"></span>{html.escape(names.get(code, str(code)))}</span>'
        )
    return f'<div class="afa-legend"><b>Errors</b> {"".join(items)} (grey: correct or ignored)</div>'


def fit_to(values: np.ndarray, size: tuple[int, int], mode: str = "nearest") -> np.ndarray:
    """Resize a 2-D map (token grid or label map) to ``size = (H, W)`` for display.

    ``nearest`` keeps each token a crisp square (and class ids intact); ``bilinear`` smooths."""
    values = np.asarray(values)
    height, width = int(size[0]), int(size[1])
    if values.shape[:2] == (height, width):
        return values
    if mode == "nearest":
        rows = np.minimum((np.arange(height) * values.shape[0]) // height, values.shape[0] - 1)
        cols = np.minimum((np.arange(width) * values.shape[1]) // width, values.shape[1] - 1)
        return values[rows[:, None], cols[None, :]]
    if mode == "bilinear":
        return cv2.resize(values.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    raise ValueError(f"unknown resize mode {mode!r}; use 'nearest' or 'bilinear'")


def token_at(point: tuple[int, int], image_shape: tuple[int, ...], grid: tuple[int, int]) -> tuple[int, int]:
    """The token ``(row, col)`` of an ``(h, w)`` grid laid evenly over the image that covers pixel
    ``point = (x, y)`` (clamped to the image)."""
    height, width = image_shape[:2]
    x = min(max(int(point[0]), 0), width - 1)
    y = min(max(int(point[1]), 0), height - 1)
    return min(y * grid[0] // height, grid[0] - 1), min(x * grid[1] // width, grid[1] - 1)


def token_box(
    token: tuple[int, int], image_shape: tuple[int, ...], grid: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The image area ``(x0, y0, x1, y1)`` that token ``(row, col)`` of an ``(h, w)`` grid covers."""
    height, width = image_shape[:2]
    r, c = token
    return (
        c * width // grid[1],
        r * height // grid[0],
        (c + 1) * width // grid[1],
        (r + 1) * height // grid[0],
    )


def draw_marker(image: np.ndarray, point: tuple[int, int] | None, colour=(255, 255, 255)) -> np.ndarray:
    """A ring with a cross at ``point = (x, y)``, outlined in black so it shows on any background."""
    out = _rgb(image).copy()
    if point is None:
        return out
    x, y = int(point[0]), int(point[1])
    radius = max(4, min(out.shape[:2]) // 40)
    for thickness, col in ((4, (0, 0, 0)), (2, tuple(int(c) for c in colour))):
        cv2.circle(out, (x, y), radius, col, thickness, lineType=cv2.LINE_AA)
        cv2.line(out, (x - 2 * radius, y), (x - radius, y), col, thickness, lineType=cv2.LINE_AA)
        cv2.line(out, (x + radius, y), (x + 2 * radius, y), col, thickness, lineType=cv2.LINE_AA)
        cv2.line(out, (x, y - 2 * radius), (x, y - radius), col, thickness, lineType=cv2.LINE_AA)
        cv2.line(out, (x, y + radius), (x, y + 2 * radius), col, thickness, lineType=cv2.LINE_AA)
    return out


def draw_token_box(
    image: np.ndarray, box: tuple[int, int, int, int] | None, colour=(255, 255, 255)
) -> np.ndarray:
    """Outline the image area ``(x0, y0, x1, y1)`` covered by one token."""
    out = _rgb(image).copy()
    if box is None:
        return out
    x0, y0, x1, y1 = (int(v) for v in box)
    cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (0, 0, 0), 3)
    cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, 1)
    return out


def resize_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Shrink (never enlarge) so the longer side is ``long_side`` pixels."""
    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def tile_grid(
    tiles: list[np.ndarray],
    titles: list[str] | None = None,
    columns: int | None = None,
    gap: int = 4,
    background: int = 255,
) -> np.ndarray:
    """Arrange equally sized RGB tiles in a grid with a short title above each."""
    if not tiles:
        return np.full((32, 32, 3), background, dtype=np.uint8)
    height, width = tiles[0].shape[:2]
    columns = columns or int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / columns))
    title_h = 18 if titles else 0
    cell_h, cell_w = height + title_h + gap, width + gap
    canvas = np.full((rows * cell_h + gap, columns * cell_w + gap, 3), background, dtype=np.uint8)
    for n, tile in enumerate(tiles):
        r, c = divmod(n, columns)
        y, x = gap + r * cell_h, gap + c * cell_w
        if titles:
            cv2.putText(
                canvas,
                titles[n],
                (x + 2, y + 13),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                (20, 20, 20),
                1,
                lineType=cv2.LINE_AA,
            )
        canvas[y + title_h : y + title_h + height, x : x + width] = _rgb(tile)[:height, :width]
    return canvas


def class_name(classes: list[str], class_id: int) -> str:
    """The name of ``class_id``, or "class N" when ``classes`` does not have it."""
    return classes[class_id] if 0 <= class_id < len(classes) else f"class {class_id}"


def legend_html(classes: list[str], ids, title: str = "") -> str:
    """Colour swatches with class names for the given class ids (ignore shown as 'ignore')."""
    items = []
    for class_id in ids:
        class_id = int(class_id)
        name = "ignore" if class_id == IGNORE_ID else class_name(classes, class_id)
        r, g, b = (int(v) for v in palette()[class_id])
        items.append(
            '<span style="display:inline-flex;align-items:center;margin:2px 10px 2px 0;white-space:nowrap">'
            f'<span style="width:14px;height:14px;border:1px solid #888;background:rgb({r},{g},{b});'
            f'display:inline-block;margin-right:5px"></span>{html.escape(name)}</span>'
        )
    head = f"<b>{html.escape(title)}</b> " if title else ""
    return f'<div class="afa-legend">{head}{"".join(items)}</div>'


def colourbar_html(vmin: float, vmax: float, cmap: str = "jet", label: str = "") -> str:
    """A horizontal colour bar as inline CSS gradient, with its range."""
    lut = colormap_lut(cmap)
    stops = ", ".join(f"rgb({r},{g},{b})" for r, g, b in lut[::32].tolist() + [lut[-1].tolist()])
    return (
        '<div class="afa-colourbar" style="display:flex;align-items:center;gap:6px;font-size:0.85em">'
        f"<span>{html.escape(label)} {vmin:.3g}</span>"
        f'<span style="flex:1;height:10px;max-width:240px;background:linear-gradient(to right, {stops})">'
        f"</span><span>{vmax:.3g}</span></div>"
    )


def placeholder(text: str, size: tuple[int, int] = (160, 240)) -> np.ndarray:
    """A light grey picture with a short centred message, for views a model cannot provide."""
    canvas = np.full((size[0], size[1], 3), 235, dtype=np.uint8)
    lines = _wrap(text, max(8, size[1] // 9))
    y = size[0] // 2 - 9 * (len(lines) - 1)
    for line in lines:
        (tw, _), _ = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        cv2.putText(
            canvas,
            line,
            ((size[1] - tw) // 2, y),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (90, 90, 90),
            1,
            lineType=cv2.LINE_AA,
        )
        y += 18
    return canvas


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])
