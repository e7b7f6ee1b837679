"""Drawing one scene: background, clutter and items, with the exact mask.

What makes the benchmark a test of *localisation* (see the package docstring and the README):
half of the images (``camouflage``) are drawn from one small palette of colours per image: the
background's gradient, the clutter and the items all take their colours from it, and items are
multi-coloured (two or three palette colours in patches, halves or stripes) with mottling like
the background's. There PAR, which spreads labels along similar colours, cannot complete an
object from the part its CAM found, and colour does not say "object". The items' colours still
differ from what they cover and their inner shading (the Fashion-MNIST pixels) stays, so the
silhouette, which makes the class easy to recognise, stays visible. The other half are drawn as
before (one contrasting colour per item); ``camouflage=0`` gives exactly the earlier images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from core.data.scenes.sprites import DEFAULT_CLASS_SET, SPRITE_SIZE, SpriteSet
from core.errors import UserError

IGNORE_WEIGHT = 0.85  # a pixel is labelled only if one class makes up >= 85% of its colour
ALPHA_LOW, ALPHA_HIGH = 12.0, 45.0  # item intensity -> alpha ramp (0..255 scale)
SOLID_ALPHA = 0.5  # an item "covers" a pixel (for occlusion and visibility) where alpha >= 0.5
_SPLIT_CODE = {"train": 0, "val": 1}
FIT_MARGIN = 1.3  # an item's side (28 px x scale) times this must fit in the image
CONTRAST = 80.0  # camouflaged items: palette colours this far (L1, 0-255) from what they cover


@dataclass
class SceneOptions:
    """Every knob of the generator (written to meta.json). The defaults ARE the benchmark."""

    size: int = 192  # 12 tokens at stride 16 (18 at the CAM scale 1.5)
    min_objects: int = 1
    max_objects: int = 3
    scale_min: float = 2.4  # item enlargement: 28 px -> 67..118 px, about 4-7 tokens across
    scale_max: float = 4.2
    clutter: float = 0.5  # clutter density: about 16 x clutter class-free shapes per image
    # largest filled clutter shape (rectangle, disc, ellipse, blob), a fraction of the image side
    # (0.125: 24 px, under two tokens); 1 leaves them as drawn, up to about a third of the side,
    # item-sized boxes the models took for bags (version 2 of the benchmark; README)
    clutter_solid_max: float = 0.125
    occlusion: float = 0.6  # an item may be hidden by later items up to this fraction
    min_pixels: int = 120  # labelled pixels a class needs to count in the image label
    texture: float = 0.5  # probability that an item gets a gradient / pattern fill
    max_rotation: float = 20.0  # degrees
    # share of images drawn camouflaged (multi-coloured items in the background's palette); 0.5
    # trades localisation difficulty against recognition within a CPU budget (measured, README)
    camouflage: float = 0.5
    class_set: str = DEFAULT_CLASS_SET  # "groups4" (4 classes) | "groups" (5) | "fashion10" (10)
    quality: int = 95  # JPEG quality

    def validate(self) -> None:
        if not (0 <= self.min_objects <= self.max_objects and self.max_objects >= 1):
            raise UserError("need 0 <= --min-objects <= --max-objects and --max-objects >= 1")
        if not 0 < self.scale_min <= self.scale_max:
            raise UserError("need 0 < --scale-min <= --scale-max")
        if self.size < 32:
            raise UserError(f"--size must be at least 32 px, got {self.size}")
        fits = self.size / (SPRITE_SIZE * FIT_MARGIN)
        if self.scale_max > fits:
            raise UserError(
                f"items enlarged up to --scale-max {self.scale_max:g}x do not fit in --size {self.size} px "
                f"images: use --scale-max {fits:.2f} or less (--scale-min at most that) or a larger --size"
            )
        if not 0.0 <= self.occlusion < 1.0:
            raise UserError("--occlusion must be in [0, 1)")
        if self.clutter < 0:
            raise UserError("--clutter must be >= 0")
        if not 0.0 < self.clutter_solid_max <= 1.0:
            raise UserError("--clutter-solid-max must be in (0, 1] (a fraction of the image side)")
        if not 0.0 <= self.camouflage <= 1.0:
            raise UserError("--camouflage must be in [0, 1]")
        if not 0.0 <= self.texture <= 1.0:
            raise UserError("--texture must be in [0, 1] (a probability)")
        if self.max_rotation < 0:
            raise UserError("--max-rotation must be >= 0 (degrees either way)")
        if not 1 <= self.quality <= 100:
            raise UserError("--quality must be in 1..100 (JPEG quality)")


@dataclass
class Scene:
    """One generated image. ``image (S, S, 3)`` uint8 RGB, ``mask (S, S)`` uint8 class ids with 255
    ignore, ``instances (S, S)`` int16 top-most item (1-based; 0 none) where an item's alpha >= 0.5,
    ``clutter (S, S)`` bool where clutter was drawn, ``items`` per-item records."""

    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    clutter: np.ndarray
    items: list[dict[str, Any]] = field(default_factory=list)
    camouflaged: bool = False  # drawn from one palette (``SceneOptions.camouflage``)

    def labels(self) -> list[int]:
        ids = np.unique(self.mask)
        return [int(c) for c in ids if c not in (0, 255)]


def _random_colour(
    rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]
) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 3) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a random ``cells x cells`` grid upsampled bicubically
    to 1/4 of the size (where bicubic is cheap), then bilinearly (smooth enough at that point)."""
    grid = rng.uniform(-1, 1, (cells, cells, channels)).astype(np.float32)
    mid = max(cells * 4, size // 4)
    out = cv2.resize(grid, (mid, mid), interpolation=cv2.INTER_CUBIC)
    out = cv2.resize(out, (size, size), interpolation=cv2.INTER_LINEAR)
    return out.reshape(size, size, channels)


def _grain(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean uniform noise of standard deviation ``sigma`` (uniform is 4x cheaper than normal)."""
    return (rng.random(shape, dtype=np.float32) - 0.5) * (sigma * 12**0.5)


def _palette(rng: np.random.Generator) -> np.ndarray:
    """The colours of one camouflaged image: ``(P, 3)`` float32 RGB, P in 4..5, varied in hue,
    saturation and value. Background, clutter and items all draw from it."""
    return np.stack([_random_colour(rng, (0.1, 0.9), (0.25, 1.0)) for _ in range(int(rng.integers(4, 6)))])


def _patches(rng: np.random.Generator, h: int, w: int, k: int, cells: tuple[int, int]) -> np.ndarray:
    """Soft weights ``(h, w, k)`` (summing to 1) of ``k`` irregular patches: the arg-max of ``k``
    smooth random fields, softened over about a pixel. Camouflage-like regions."""
    side = max(h, w)
    fields = _smooth_noise(rng, side, int(rng.integers(*cells)), k)[:h, :w]
    weights = np.exp((fields - fields.max(-1, keepdims=True)) * 12.0)
    return weights / weights.sum(-1, keepdims=True)


def _background(rng: np.random.Generator, size: int, palette: np.ndarray | None = None) -> np.ndarray:
    """A smooth colour field with texture: ``(S, S, 3)`` float32 in about 0..255.

    With a ``palette`` (camouflage), the two gradient colours come from it.

    The colour part (a gradient between two colours plus low-frequency colour noise) is built at
    1/4 resolution and upsampled bilinearly (exact for the gradient, smooth for the noise); the
    texture part (mottling or stripes, plus grain) is one luminance channel at full resolution.
    """
    low = max(8, size // 4)
    coords = (np.arange(low, dtype=np.float32) + 0.5) / low - 0.5
    xx, yy = coords[None, :], coords[:, None]
    if palette is None:
        c0 = _random_colour(rng, (0.1, 0.8), (0.25, 0.95))
        c1 = _random_colour(rng, (0.1, 0.8), (0.25, 0.95))
    else:
        c0, c1 = palette[rng.choice(len(palette), 2, replace=False)]
    theta = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (np.cos(theta) * xx + np.sin(theta) * yy) * rng.uniform(0.5, 1.5), 0, 1)
    colour = c0 + (c1 - c0) * t[..., None]
    colour += _smooth_noise(rng, low, int(rng.integers(2, 6))) * rng.uniform(15, 50)
    colour = cv2.resize(colour, (size, size), interpolation=cv2.INTER_LINEAR)

    lum = _grain(rng, (size, size), rng.uniform(2, 7))
    kind = rng.random()
    if kind < 0.45:  # mottled texture at a medium scale
        lum += _smooth_noise(rng, size, int(rng.integers(12, 40)), 1)[..., 0] * rng.uniform(8, 25)
    elif kind < 0.65:  # soft stripes
        f = rng.uniform(6, 20)
        phi = rng.uniform(0, np.pi)
        full = (np.arange(size, dtype=np.float32) + 0.5) / size
        phase = (2 * np.pi * f) * (np.cos(phi) * full[None, :] + np.sin(phi) * full[:, None])
        lum += np.sin(phase) * rng.uniform(6, 18)
    colour += lum[..., None]
    return colour


def _draw_clutter(
    rng: np.random.Generator,
    image: np.ndarray,
    drawn: np.ndarray,
    count: int,
    palette: np.ndarray | None = None,
    solid_max: float = 1.0,
) -> None:
    """Draw ``count`` class-free shapes (strokes, circles, rectangles, ellipses, blobs) in place on
    ``image (S, S, 3)`` uint8; mark them in ``drawn (S, S)`` uint8. With a ``palette``, each shape
    takes one of its colours (slightly varied). A filled shape wider or taller than ``solid_max``
    of the side is shrunk to it (the same random draws, so 1 gives the same bytes as before)."""
    size = image.shape[0]
    cap = solid_max * size

    def fit(extent: float) -> float:  # the factor that brings a filled shape's extent to the cap
        return min(1.0, cap / max(extent, 1.0))

    for _ in range(count):
        if palette is None:
            colour = tuple(float(v) for v in _random_colour(rng, (0.0, 0.9), (0.1, 1.0)))
        else:
            base = palette[int(rng.integers(len(palette)))] * rng.uniform(0.8, 1.15)
            colour = tuple(float(v) for v in np.clip(base, 0, 255))
        kind = int(rng.integers(0, 6))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        layers: list[tuple[np.ndarray, Any]] = [(image, colour), (drawn, 255)]
        if kind == 0:  # a stroke of a few segments
            n = int(rng.integers(2, 6))
            steps = rng.normal(0, size * 0.12, (n, 2)).cumsum(0)
            pts = np.round(np.array([x, y]) + steps).astype(np.int32)
            thick = int(rng.integers(1, 6))
            for img, col in layers:
                cv2.polylines(img, [pts], False, col, thick, cv2.LINE_AA)
        elif kind == 1:  # circle, filled or outlined
            r = int(rng.integers(4, size // 6))
            thick = -1 if rng.random() < 0.5 else int(rng.integers(1, 5))
            if thick < 0:
                r = max(1, int(r * fit(2 * r)))
            for img, col in layers:
                cv2.circle(img, (x, y), r, col, thick, cv2.LINE_AA)
        elif kind == 2:  # rectangle
            w, h = (int(v) for v in rng.integers(6, size // 4, 2))
            thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 5))
            if thick < 0:
                w, h = (max(1, int(v * fit(max(w, h)))) for v in (w, h))
            for img, col in layers:
                cv2.rectangle(img, (x, y), (x + w, y + h), col, thick, cv2.LINE_AA)
        elif kind == 3:  # ellipse
            axes = tuple(int(v) for v in rng.integers(4, size // 7, 2))
            ang = float(rng.uniform(0, 180))
            thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 4))
            if thick < 0:
                axes = tuple(max(1, int(a * fit(2 * max(axes)))) for a in axes)
            for img, col in layers:
                cv2.ellipse(img, (x, y), axes, ang, 0, 360, col, thick, cv2.LINE_AA)
        else:  # a blob: a smooth random polygon of item size
            n = int(rng.integers(6, 12))
            base = rng.uniform(8, size * 0.14)
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = base * rng.uniform(0.5, 1.3, n)
            radii = radii * fit(2 * radii.max())
            pts = np.stack([x + radii * np.cos(angles), y + radii * np.sin(angles)], 1)
            pts = np.round(pts).astype(np.int32)
            for img, col in layers:
                cv2.fillPoly(img, [pts], col, cv2.LINE_AA)


def _fill_small_holes(sprite: np.ndarray, max_hole: int = 6, level: float = 40.0) -> np.ndarray:
    """Raise enclosed dark specks (at most ``max_hole`` source pixels) to ``level``: they are dark
    prints on the item, not holes through it. Larger enclosed gaps (sandal straps) stay open."""
    empty = (sprite <= ALPHA_LOW).astype(np.uint8)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(empty, connectivity=4)
    out = sprite.astype(np.float32)
    border = set(np.unique(np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]])).tolist())
    for k in range(1, n):
        if k not in border and stats[k, cv2.CC_STAT_AREA] <= max_hole:
            out[comp == k] = np.maximum(out[comp == k], level)
    return out


def _item_alpha(sprite: np.ndarray, scale: float, angle: float, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Enlarge, flip and rotate a 28x28 item. Returns ``(alpha, intensity)`` float32 ``(h, w)``
    cropped to the item: alpha from the item's intensity (threshold with a soft edge)."""
    side = max(8, round(SPRITE_SIZE * scale))
    pad = side // 2
    big = cv2.resize(_fill_small_holes(sprite), (side, side), interpolation=cv2.INTER_CUBIC)
    big = np.clip(big, 0, 255)
    if flip:
        big = big[:, ::-1]
    big = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    if angle:
        c = big.shape[0] / 2
        rot = cv2.getRotationMatrix2D((c, c), angle, 1.0)
        big = cv2.warpAffine(big, rot, big.shape[::-1], flags=cv2.INTER_LINEAR, borderValue=0)
    # intensity ALPHA_LOW -> alpha 0 ... ALPHA_HIGH -> alpha 1, smoothstep between: a soft 1-2 px edge
    t = np.clip((big - ALPHA_LOW) / (ALPHA_HIGH - ALPHA_LOW), 0.0, 1.0)
    alpha = t * t * (3.0 - 2.0 * t)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.6)
    ys, xs = np.nonzero(alpha > 0.02)
    if ys.size == 0:
        return np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return alpha[y0:y1, x0:x1].copy(), big[y0:y1, x0:x1].copy()


def _item_fill(
    rng: np.random.Generator, intensity: np.ndarray, colour: np.ndarray, texture_prob: float
) -> np.ndarray:
    """The colours of an item ``(h, w, 3)`` float32: its colour shaded by the item's own intensity
    (so folds, prints and seams stay visible), optionally with a gradient or a pattern."""
    h, w = intensity.shape
    shade = 0.45 + 0.55 * np.clip(intensity / 255.0, 0, 1)
    fill = np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    if rng.random() < texture_prob:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        kind = rng.random()
        second = colour * rng.uniform(0.4, 0.8) + rng.uniform(0, 255, 3) * 0.4
        if kind < 0.5:  # gradient to a second colour
            theta = rng.uniform(0, 2 * np.pi)
            t = np.cos(theta) * xx / max(w, 1) + np.sin(theta) * yy / max(h, 1)
            t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
            fill = fill * (1 - t[..., None]) + second * t[..., None]
        elif kind < 0.8:  # stripes
            period = rng.uniform(6, 16)
            phi = rng.uniform(0, np.pi)
            s = (np.sin(2 * np.pi * (np.cos(phi) * xx + np.sin(phi) * yy) / period) > 0).astype(np.float32)
            s = cv2.GaussianBlur(s, (0, 0), 0.8)[..., None]
            fill = fill * (1 - 0.6 * s) + second * 0.6 * s
        else:  # dots
            spots = (rng.random((h, w)) < 0.04).astype(np.float32)
            spots = cv2.GaussianBlur(spots, (0, 0), 1.5)
            spots = np.clip(spots / max(float(spots.max()), 1e-6), 0, 1)[..., None]
            fill = fill * (1 - spots) + second * spots
    return fill * shade[..., None]


def _camouflage_fill(
    rng: np.random.Generator,
    intensity: np.ndarray,
    palette: np.ndarray,
    texture_prob: float,
    under: np.ndarray,
) -> np.ndarray:
    """The colours of a camouflaged item ``(h, w, 3)`` float32: two or three palette colours laid
    out as patches, two halves or stripes (a single colour in one item of five), then optionally a
    texture, shaded by the item's own intensity as in ``_item_fill``.

    The colours are the palette's, so each also occurs in the background and the clutter; only
    those that differ from ``under`` (the mean colour of what the item covers) are used, so that
    the item's outline stays visible where it is placed: the silhouette is what makes the class
    easy to recognise (measured: with the item's own colour allowed to match its surroundings,
    classification after 200 iterations reached F1 0.35 against 0.77 with contrasting items)."""
    h, w = intensity.shape
    k = 1 if rng.random() < 0.2 else int(rng.integers(2, 4))
    distance = np.abs(palette - under).sum(-1)
    contrasting = np.flatnonzero(distance > CONTRAST)
    if len(contrasting) < k:  # too few: the k colours farthest from what lies under the item
        contrasting = np.argsort(distance)[-k:]
    colours = palette[rng.choice(contrasting, k, replace=False)]
    if k == 1:
        fill = np.broadcast_to(colours[0], (h, w, 3)).astype(np.float32)
    else:
        kind = rng.random()
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        if kind < 0.5:  # irregular patches
            weights = _patches(rng, h, w, k, (2, 5))
        else:  # halves / bands along a random direction (stripes when the period is short)
            theta = rng.uniform(0, np.pi)
            period = rng.uniform(0.5, 1.2) * max(h, w) if kind < 0.75 else rng.uniform(8, 20)
            phase = (np.cos(theta) * xx + np.sin(theta) * yy) / period + rng.uniform(0, 1)
            band = np.floor(phase * k).astype(np.int64) % k
            weights = cv2.GaussianBlur(np.eye(k, dtype=np.float32)[band], (0, 0), 0.8).reshape(h, w, k)
        fill = weights @ colours
    if rng.random() < texture_prob:  # mottling that does not depend on the colours
        fill = fill + _smooth_noise(rng, max(h, w), int(rng.integers(6, 16)), 1)[:h, :w] * rng.uniform(10, 30)
    # shading centred on 1: folds and prints stay visible, but the item is not darker on average
    # than the background (otherwise brightness alone would tell items from background)
    t = np.clip(intensity / 255.0, 0, 1)
    solid = t[intensity > ALPHA_HIGH]
    shade = np.clip(1.0 + 0.6 * (t - (np.median(solid) if solid.size else 0.5)), 0.55, 1.35)
    return fill * shade[..., None]


@dataclass
class _Placed:
    alpha: np.ndarray
    intensity: np.ndarray
    box: tuple[int, int, int, int]  # y0, y1, x0, x1
    cls: int
    record: dict[str, Any]


def _pick_item(rng: np.random.Generator, sprites: SpriteSet, class_set: str) -> int:
    """An item index: uniform over items for the source's own classes ("fashion10", as before),
    class first then item for grouped classes (so merged classes are not 4x as frequent)."""
    if class_set == "fashion10":
        return int(rng.integers(0, len(sprites.images)))
    members = sprites.members(int(rng.integers(0, len(sprites.class_names))))
    return int(members[int(rng.integers(0, len(members)))])


def _try_place(
    rng: np.random.Generator,
    sprites: SpriteSet,
    opts: SceneOptions,
    instances: np.ndarray,
    areas: list[int],
    tries: int = 25,
) -> _Placed | None:
    """Draw an item and a position where no earlier item loses more than ``opts.occlusion`` of
    itself (nor falls under ``min_pixels``). Updates nothing; returns None after ``tries``."""
    size = opts.size
    for _ in range(tries):
        idx = _pick_item(rng, sprites, opts.class_set)
        scale = float(rng.uniform(opts.scale_min, opts.scale_max))
        angle = float(rng.uniform(-opts.max_rotation, opts.max_rotation))
        flip = bool(rng.random() < 0.5)
        alpha, intensity = _item_alpha(sprites.images[idx], scale, angle, flip)
        h, w = alpha.shape
        solid = alpha >= SOLID_ALPHA
        area = int(solid.sum())
        if h >= size or w >= size or area < opts.min_pixels:
            continue
        y0, x0 = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        under = instances[y0 : y0 + h, x0 : x0 + w][solid]
        ok = True
        for k, item_area in enumerate(areas, start=1):
            visible_now = int((instances == k).sum())
            visible_after = visible_now - int((under == k).sum())
            if visible_after < (1.0 - opts.occlusion) * item_area or visible_after < opts.min_pixels:
                ok = False
                break
        if not ok:
            continue
        record = {
            "source_split": sprites.split,
            "source_index": idx,
            "class": int(sprites.labels[idx]) + 1,
            "scale": round(scale, 4),
            "angle": round(angle, 3),
            "flip": flip,
            "box": [x0, y0, x0 + w, y0 + h],
            "area": area,
        }
        return _Placed(alpha, intensity, (y0, y0 + h, x0, x0 + w), int(sprites.labels[idx]) + 1, record)
    return None


def generate_scene(
    sprites: SpriteSet, rng: np.random.Generator, opts: SceneOptions, tries: int = 30
) -> Scene:
    """One scene: background, clutter, then items (later over earlier), with its exact mask.

    A scene is accepted when at least ``min_objects`` items fit and every item's class keeps at
    least ``min_pixels`` labelled pixels (so no image has an empty label and every placed item is
    named in it); otherwise it is drawn again from the same generator (still deterministic).
    """
    for _ in range(tries):
        scene = _compose_scene(sprites, rng, opts)
        if len(scene.items) >= opts.min_objects and all(
            r["class_pixels"] >= opts.min_pixels for r in scene.items
        ):
            return scene
    raise UserError(
        f"could not place {opts.min_objects} item(s) with {opts.min_pixels} labelled pixels each in "
        f"{tries} tries: lower --min-pixels or --min-objects, or raise --size / --scale-min"
    )


def _compose_scene(sprites: SpriteSet, rng: np.random.Generator, opts: SceneOptions) -> Scene:
    size = opts.size
    # (no random number is drawn for camouflage 0, so such images keep their earlier bytes)
    palette = _palette(rng) if opts.camouflage > 0 and rng.random() < opts.camouflage else None
    bg = _background(rng, size, palette)
    image = np.clip(bg, 0, 255).astype(np.uint8)
    clutter = np.zeros((size, size), np.uint8)
    _draw_clutter(rng, image, clutter, int(rng.poisson(16 * opts.clutter)), palette, opts.clutter_solid_max)

    n_items = int(rng.integers(opts.min_objects, opts.max_objects + 1))
    placed: list[_Placed] = []
    instances = np.zeros((size, size), np.int16)
    areas: list[int] = []
    for _ in range(50):  # retry whole layouts when fewer than min_objects fit
        placed, areas = [], []
        instances[:] = 0
        for _ in range(n_items):
            item = _try_place(rng, sprites, opts, instances, areas)
            if item is None:
                continue
            placed.append(item)
            areas.append(item.record["area"])
            y0, y1, x0, x1 = item.box
            region = instances[y0:y1, x0:x1]
            region[item.alpha >= SOLID_ALPHA] = len(placed)
        if len(placed) >= opts.min_objects:
            break

    # composite; track each layer's share of every pixel's colour for the mask
    canvas = image.astype(np.float32)
    share = np.zeros((len(placed) + 1, size, size), np.float32)
    share[0] = 1.0
    for layer, item in enumerate(placed, start=1):
        y0, y1, x0, x1 = item.box
        local = canvas[y0:y1, x0:x1]
        if palette is not None:
            under = (
                local[item.alpha >= SOLID_ALPHA].mean(0)
                if (item.alpha >= SOLID_ALPHA).any()
                else local.mean((0, 1))
            )
            fill = _camouflage_fill(rng, item.intensity, palette, opts.texture, under)
        else:
            colour = _random_colour(rng, (0.35, 1.0), (0.45, 1.0))
            for _ in range(6):  # keep the item distinguishable from what lies under it
                if np.abs(local.reshape(-1, 3).mean(0) - colour).sum() > 90:
                    break
                colour = _random_colour(rng, (0.35, 1.0), (0.45, 1.0))
            fill = _item_fill(rng, item.intensity, colour, opts.texture)
        a = item.alpha[..., None]
        canvas[y0:y1, x0:x1] = local * (1 - a) + fill * a
        share[:, y0:y1, x0:x1] *= 1 - item.alpha
        share[layer, y0:y1, x0:x1] += item.alpha
    canvas += _grain(rng, (size, size, 3), 1.5)  # sensor-like grain over everything
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)

    # per class (items of one class add up), then the class with the largest share, if clear
    class_ids = [0, *sorted({p.cls for p in placed})]
    layers_of = {c: [i + 1 for i, p in enumerate(placed) if p.cls == c] for c in class_ids[1:]}
    class_share = np.stack([share[0]] + [share[layers_of[c]].sum(0) for c in class_ids[1:]])
    mask = np.zeros((size, size), np.uint8)
    best = class_share[0]
    for k in range(1, len(class_ids)):  # argmax over a handful of classes, cheaper than argmax(0)
        better = class_share[k] > best
        mask[better] = class_ids[k]
        best = np.maximum(best, class_share[k])
    mask[best < IGNORE_WEIGHT] = 255
    for item_id, item in enumerate(placed, start=1):
        item.record["visible"] = round(float((instances == item_id).sum()) / max(item.record["area"], 1), 4)
    counts = np.bincount(mask.ravel(), minlength=256)
    for cls in class_ids[1:]:
        if 0 < counts[cls] < opts.min_pixels:  # too little of it to name in the label
            mask[mask == cls] = 255
    counts = np.bincount(mask.ravel(), minlength=256)
    for item in placed:
        item.record["class_pixels"] = int(counts[item.cls])
    return Scene(image, mask, instances, clutter > 0, [p.record for p in placed], palette is not None)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Randomness of one image: a pure function of ``(seed, split, index)``."""
    return np.random.default_rng([int(seed), _SPLIT_CODE[split], int(index)])
