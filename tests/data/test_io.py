"""core.io: robust reading of users' images and of label masks."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.io import MIN_SIDE, ImageReadError, read_image, read_mask, voc_palette


def two_colour(w: int = 80, h: int = 40) -> Image.Image:
    """Left half red, right half blue."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


def test_exif_rotated_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored pixels must be turned 90 degrees clockwise for display
    two_colour(80, 40).save(path, exif=exif, quality=95)
    rgb, notes = read_image(path)
    assert rgb.shape == (80, 40, 3)  # displayed: tall
    # turning clockwise brings the stored left (red) column to the top
    assert rgb[5, 20, 0] > 200 and rgb[5, 20, 2] < 60
    assert rgb[-5, 20, 2] > 200 and rgb[-5, 20, 0] < 60
    assert any("EXIF" in n for n in notes)


def test_grayscale_png(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (40, 1))).save(path)
    rgb, notes = read_image(path)
    assert rgb.shape == (40, 64, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert rgb[0, 10, 0] == 40 and any("grayscale" in n for n in notes)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((40, 40, 4), np.uint8)
    arr[:, :20] = (255, 0, 0, 255)  # opaque red
    arr[:, 20:30] = (255, 0, 0, 0)  # fully transparent
    arr[:, 30:] = (0, 0, 0, 128)  # half transparent black
    path = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(path)
    rgb, notes = read_image(path)
    assert tuple(rgb[0, 0]) == (255, 0, 0)
    assert tuple(rgb[0, 25]) == (255, 255, 255)
    assert abs(int(rgb[0, 35, 0]) - 127) <= 1
    assert any("composited on white" in n for n in notes)
    rgb_la, _ = read_image(Image.fromarray(arr[..., [0, 3]], "LA"))
    assert tuple(rgb_la[0, 25]) == (255, 255, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (40, 40), 1)
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    img.paste(0, (0, 0, 20, 40))
    img.info["transparency"] = 0
    path = tmp_path / "pal.png"
    img.save(path, transparency=0)
    rgb, notes = read_image(path)
    assert tuple(rgb[5, 5]) == (255, 255, 255)  # transparent index -> white
    assert tuple(rgb[5, 30]) == (0, 200, 0)
    assert any("composited" in n for n in notes)


def test_16_bit_png_scaled_by_full_range(tmp_path: Path) -> None:
    arr = np.zeros((40, 40), np.uint16)
    arr[:, 10:20] = 32768
    arr[:, 20:] = 65535
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    rgb, notes = read_image(path)
    assert rgb[0, 0, 0] == 0 and rgb[0, 15, 0] == 128 and rgb[0, 30, 0] == 255
    assert any("16-bit" in n for n in notes)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (48, 40), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    rgb, notes = read_image(path)
    assert rgb.shape == (40, 48, 3)
    r, g, b = (int(v) for v in rgb[20, 24])
    assert r > 200 and g < 60 and b < 60
    assert any("CMYK" in n for n in notes)


def test_arrays_of_all_kinds() -> None:
    base = np.linspace(0, 1, 40 * 40).reshape(40, 40)
    rgb, notes = read_image(base.astype(np.float32))
    assert rgb.dtype == np.uint8 and rgb[-1, -1, 0] == 255 and any("[0, 1]" in n for n in notes)
    assert read_image(base * 255.0)[0][-1, -1, 1] == 255
    assert read_image(base > 0.5)[0][-1, -1, 2] == 255
    assert read_image((base * 65535).astype(np.uint16))[0][-1, -1, 0] == 255
    assert read_image(base[..., None].repeat(4, 2))[0].shape == (40, 40, 3)
    assert read_image((base * 255).astype(np.uint8)[..., None])[0].shape == (40, 40, 3)
    rgb, notes = read_image(base * 1000 - 500)  # any other range is stretched
    assert rgb.min() == 0 and rgb.max() == 255 and any("stretched" in n for n in notes)
    nan = base.copy()
    nan[0, 0] = np.nan
    assert read_image(nan)[0][0, 0, 0] == 0


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros((40, 40, 5)), "not an image"),
        (np.zeros((0, 40, 3)), "zero size"),
        (np.zeros((4, 4, 4, 4)), "not an image"),
        (np.array([["a"]]), "not an image"),
    ],
)
def test_bad_arrays(bad: np.ndarray, words: str) -> None:
    with pytest.raises(ImageReadError, match=words):
        read_image(bad)


def test_corrupt_truncated_empty_and_text_files(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_image(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="not an image PIL can read"):
        read_image(b"\x00\x01garbage" * 40)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(empty)
    text = tmp_path / "notes.jpg"
    text.write_text("this is a text file, not a picture\n")
    with pytest.raises(ImageReadError, match="not an image PIL can read") as info:
        read_image(text)
    assert "notes.jpg" in str(info.value)
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError):
        read_image(b"")
    assert issubclass(ImageReadError, ValueError)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageReadError, match="too large"):
        read_image(_png_header_only(30000, 30000))


def test_huge_image_is_downscaled_with_a_note(tmp_path: Path) -> None:
    rgb, notes = read_image(np.zeros((200, 3000, 3), np.uint8), max_side=1024)
    assert rgb.shape == (68, 1024, 3)
    assert "downscaled from 3000x200 to 1024x68" in notes
    path = tmp_path / "big.jpg"  # JPEGs are decoded at a reduced scale first (draft)
    Image.new("RGB", (2400, 1600), (10, 200, 30)).save(path, quality=90)
    rgb, notes = read_image(path, max_side=500)
    assert rgb.shape == (333, 500, 3)
    assert "downscaled from 2400x1600 to 500x333" in notes
    assert abs(int(rgb[100, 100, 1]) - 200) < 6


def test_tiny_image_is_upscaled() -> None:
    rgb, notes = read_image(np.full((10, 20, 3), 7, np.uint8))
    assert rgb.shape == (MIN_SIDE, 64, 3) and (rgb == 7).all()
    assert any("upscaled from 20x10" in n for n in notes)
    rgb, notes = read_image(np.zeros((1, 4000, 3), np.uint8), max_side=512)
    assert min(rgb.shape[:2]) >= MIN_SIDE and max(rgb.shape[:2]) <= 512


def test_file_object_and_pil_inputs() -> None:
    buf = io.BytesIO()
    two_colour().save(buf, "PNG")
    buf.seek(0)
    assert read_image(buf)[0].shape == (40, 80, 3)
    assert read_image(two_colour().convert("1"))[0].shape == (40, 80, 3)
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(12345)


def test_read_mask_gives_palette_indices(tmp_path: Path) -> None:
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 15
    mask[0] = 255
    img = Image.fromarray(mask)
    img.putpalette(voc_palette().ravel().tolist())
    img.save(tmp_path / "m.png")
    got = read_mask(tmp_path / "m.png")
    assert got.dtype == np.uint8 and np.array_equal(got, mask)
    Image.fromarray(voc_palette()[mask]).save(tmp_path / "rgb.png")  # colour-coded like VOC's
    assert np.array_equal(read_mask(tmp_path / "rgb.png"), mask)
    Image.fromarray(np.full((4, 4, 3), (1, 2, 3), np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(ImageReadError, match="not VOC class colours"):
        read_mask(tmp_path / "odd.png")
