"""frame_problem: the bytes of a frame file tell a truncated file or one that is no image."""

import io

import numpy as np
import pytest
from PIL import Image

from vod_d2.data.datasets.frame_files import frame_problem
from vod_d2.data.mapper import FrameReadError, read_frame


def _encoded(fmt, **options):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _exif_jpeg():
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: an APP1 segment before the frame header
    return _encoded("JPEG", exif=exif.tobytes())


JPEG = _encoded("JPEG")
PNG = _encoded("PNG")
READABLE = {
    "baseline.jpg": JPEG,
    "progressive.jpg": _encoded("JPEG", progressive=True),
    "exif.jpg": _exif_jpeg(),
    "padded.jpg": JPEG + b"\0" * 100,  # bytes after the end marker, as some writers leave
    "frame.png": PNG,
    "png_named.JPEG": PNG,  # some ILSVRC .JPEG files are PNGs
    "frame.bmp": _encoded("BMP"),
}
CORRUPT = {
    "half.jpg": (JPEG[: len(JPEG) // 2], "truncated: no JPEG end marker FF D9 in its last"),
    "no_end.jpg": (JPEG[:-2], "truncated: no JPEG end marker FF D9 in its last"),
    "header.jpg": (JPEG[:100], "truncated in its header"),
    "random.jpg": (
        b"\x25\xf4\xc1\x6a" + bytes(range(256)) * 8,
        "not an image: it starts with 25 f4 c1 6a, not a JPEG or PNG signature",
    ),
    "empty.jpg": (b"", "an empty file"),
    "half.png": (PNG[: len(PNG) // 2], "truncated: no PNG IEND chunk in its last"),
    "header.png": (PNG[:20], "truncated or corrupt header: no IHDR chunk"),
}


@pytest.mark.parametrize("name", READABLE)
def test_files_pil_reads_have_no_problem(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(READABLE[name])
    assert read_frame(str(path), "RGB").shape[:2] in ((48, 64), (64, 48))
    assert frame_problem(str(path)) is None


@pytest.mark.parametrize("name", CORRUPT)
def test_truncated_files_and_files_that_are_no_image_are_named(tmp_path, name):
    data, problem = CORRUPT[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(FrameReadError):
        read_frame(str(path), "RGB")  # what training would hit
    assert frame_problem(str(path)).startswith(problem)
