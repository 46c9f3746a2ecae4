from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from task.data.records import (
    CorruptImageError,
    ImageRecord,
    check_image,
    load_rgb,
    validate_images,
)
from tests.task.data.conftest import write_image


@pytest.mark.parametrize(
    "mode,fmt,ext",
    [
        ("RGB", "JPEG", ".jpg"),
        ("L", "PNG", ".png"),
        ("RGBA", "PNG", ".png"),
        ("P", "PNG", ".png"),
        ("CMYK", "JPEG", ".jpg"),
        ("LA", "PNG", ".png"),
        ("1", "PNG", ".png"),
        ("I;16", "TIFF", ".tif"),
        ("RGB", "TIFF", ".tif"),
    ],
)
def test_load_rgb_any_mode(tmp_path: Path, mode: str, fmt: str, ext: str) -> None:
    p = write_image(tmp_path / f"img{ext}", fmt, mode=mode, size=9)
    im = load_rgb(str(p))
    assert im.mode == "RGB" and im.size == (9, 9)


def test_16bit_tiff_uses_full_range(tmp_path: Path) -> None:
    arr = np.full((4, 4), 4000, dtype=np.uint16)
    arr[0, 0] = 8000
    p = tmp_path / "x.tif"
    Image.fromarray(arr).save(p)
    out = np.asarray(load_rgb(str(p)))
    assert out[0, 0, 0] == 255 and 120 < out[1, 1, 0] < 135


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p = tmp_path / "t.png"
    im.save(p, transparency=0)
    assert load_rgb(str(p)).getpixel((0, 0)) == (255, 0, 0)


def test_truncated_jpeg_names_file(tmp_path: Path) -> None:
    p = write_image(tmp_path / "cls" / "broken.jpg", size=64)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        load_rgb(str(p))


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_garbage_names_file(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "junk.png"
    p.write_bytes(content)
    with pytest.raises(CorruptImageError, match="junk.png") as info:
        load_rgb(str(p))
    assert "skip-corrupt" in str(info.value)
    with pytest.raises(CorruptImageError):
        check_image(str(p), decode=False)


def test_missing_file_names_file(tmp_path: Path) -> None:
    with pytest.raises(CorruptImageError, match="nope.jpg"):
        load_rgb(str(tmp_path / "nope.jpg"))


def test_corrupt_is_value_error() -> None:
    assert issubclass(CorruptImageError, ValueError)


def test_validate_images_raise_or_skip(tmp_path: Path) -> None:
    good = [write_image(tmp_path / f"g{i}.jpg", value=i) for i in range(3)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 garbage")
    recs = [ImageRecord(f"x/{p.name}", str(p), 0) for p in [*good, bad]]
    with pytest.raises(CorruptImageError, match="bad.jpg"):
        validate_images(recs)
    kept, skipped = validate_images(recs, skip_corrupt=True)
    assert skipped == 1 and [r.image_id for r in kept] == [r.image_id for r in recs[:3]]


def test_validate_decode_catches_truncation(tmp_path: Path) -> None:
    p = write_image(tmp_path / "t.jpg", size=64)
    p.write_bytes(p.read_bytes()[:-200])
    rec = [ImageRecord("x/t.jpg", str(p), 0)]
    assert validate_images(rec, decode=False)[1] == 0  # header is fine
    assert validate_images(rec, skip_corrupt=True, decode=True)[1] == 1
