"""The analysis handler (Inspect's image upload) on odd images, with the real core and tiny
checkpoints: each gives an analysis or one message (never a traceback or "internal error"), and
the next normal image is analysed as usual."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data.test_io import _png_header_only  # a header that declares a huge image

MAX_SIDE = 160  # the app's long side (512 by default), smaller here to keep the test fast


def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    import cv2

    small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _jpeg(rgb: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def _write(path: Path, kind: str) -> None:
    """Write the odd image ``kind`` to ``path``."""
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "truncated_jpeg":
        data = _jpeg(_smooth(120, 160))
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text_as_image":
        path.write_text("this is a shopping list, not a picture\n" * 20)
    elif kind == "html_as_png":
        path.write_text("<html><body><img src=x onerror=alert(1)></body></html>")
    elif kind == "one_pixel":
        Image.new("RGB", (1, 1), (200, 30, 30)).save(path)
    elif kind == "3x20000":
        Image.fromarray(_smooth(3, 20000)).save(path)
    elif kind == "12000x9000":  # a 108-megapixel photo (grey, to keep the test's memory small)
        Image.new("L", (12000, 9000), 128).save(path, "JPEG", quality=80)
    elif kind == "16_bit":
        ramp = (np.linspace(0, 65535, 90 * 120).reshape(90, 120)).astype(np.uint16)
        Image.fromarray(ramp).save(path)
    elif kind == "cmyk":
        Image.fromarray(_smooth(100, 140)).convert("CMYK").save(path, "JPEG")
    elif kind == "animated_gif":
        frames = [Image.fromarray(_smooth(80, 100, seed)) for seed in range(3)]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif kind == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
        path.write_bytes(_jpeg(_smooth(60, 140), exif=exif.tobytes()))
    elif kind == "transparent_png":
        rgba = np.dstack([_smooth(90, 90), np.tile(np.linspace(0, 255, 90, dtype=np.uint8), (90, 1))])
        Image.fromarray(rgba, "RGBA").save(path)
    elif kind == "palette_transparency":
        img = Image.fromarray(_smooth(70, 70)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        img.save(path, transparency=0)
    elif kind == "one_bit":
        Image.fromarray(_smooth(64, 64)[..., 0] > 128).save(path)
    elif kind == "float_tiff":
        Image.fromarray(np.linspace(-3.0, 7.0, 50 * 60, dtype=np.float32).reshape(50, 60)).save(path)
    elif kind == "bomb_header":
        path.write_bytes(_png_header_only(100_000, 100_000))
    else:  # pragma: no cover - a typo in the table below
        raise ValueError(kind)


# kind, file name, expected: "ok" (an analysis) or words of the one message
ODD = [
    ("zero_bytes", "empty.png", "empty"),
    ("truncated_jpeg", "cut.jpg", "truncated"),
    ("text_as_image", "list.jpg", "not an image"),
    ("html_as_png", "page.png", "not an image"),
    ("bomb_header", "bomb.png", "too large"),
    ("one_pixel", "dot.png", "ok"),
    ("3x20000", "strip.png", "ok"),
    ("12000x9000", "huge.jpg", "ok"),
    ("16_bit", "deep.png", "ok"),
    ("cmyk", "print.jpg", "ok"),
    ("animated_gif", "anim.gif", "ok"),
    ("exif_rotated", "phone.jpg", "ok"),
    ("transparent_png", "alpha.png", "ok"),
    ("palette_transparency", "palette.png", "ok"),
    ("one_bit", "bits.png", "ok"),
    ("float_tiff", "float.tif", "ok"),
]


@pytest.fixture
def app_env(real_env, monkeypatch):
    from app import analysis
    from app.checkpoints import CHECKPOINTS

    monkeypatch.setattr(analysis, "MAX_SIDE", MAX_SIDE)
    return CHECKPOINTS.default("afa"), real_env


@pytest.mark.parametrize("kind, name, expected", ODD, ids=[k for k, _, _ in ODD])
def test_odd_image_gives_an_analysis_or_one_message(kind, name, expected, app_env):
    from app.inspect_view import on_image
    from app.state import Session

    afa, folder = app_env
    path = folder / name
    _write(path, kind)
    views = on_image(str(path), afa, None, False, 0.5, False, Session())
    status = views["status"]
    assert "\n" not in status.strip() and "Traceback" not in status and "internal error" not in status
    if expected == "ok":
        session = views["session"]
        assert not status.startswith("⚠️"), status
        assert session.ready and session.image.dtype == np.uint8 and session.image.shape[2] == 3
        assert max(session.image.shape[:2]) <= MAX_SIDE and min(session.image.shape[:2]) >= 1
        if kind == "exif_rotated":  # stored 140 wide and 60 high, shown upright: taller than wide
            assert session.image.shape[0] > session.image.shape[1]
    else:
        assert status.startswith("⚠️") and expected in status.lower(), status
        assert str(folder) not in status  # the server's upload folder is never shown
        assert set(views) == {"status"}  # nothing else changes: the previous views stay

    normal = folder / "normal.png"
    Image.fromarray(_smooth(96, 128, seed=5)).save(normal)
    after = on_image(str(normal), afa, None, False, 0.5, False, views.get("session") or Session())
    assert after["session"].ready and not after["status"].startswith("⚠️"), after["status"]
    assert after["session"].image.shape == (96, 128, 3)
