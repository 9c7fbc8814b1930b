"""Tests for batchgrid.imaging, on small images generated here with Pillow."""

import io
import math
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageCms, ImageFilter, JpegImagePlugin

from batchgrid import imaging
from batchgrid.errors import ConfigError, InputError
from batchgrid.imaging import (
    ConvertedImage,
    ImageError,
    ImageOptions,
    convert_to_grayscale,
    output_name,
)

#: ITU-R BT.601 luma of pure red, 0.299 * 255, as Pillow rounds it.
RED_LUMA = 76


def _encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def _convert(
    data: bytes, name: str, options: ImageOptions | None = None
) -> ConvertedImage:
    return convert_to_grayscale(
        io.BytesIO(data), name=name, options=options or ImageOptions()
    )


def _open(result: ConvertedImage) -> Image.Image:
    im = Image.open(io.BytesIO(result.data))
    im.load()
    return im


def _pixels(result: ConvertedImage) -> list[int]:
    with _open(result) as im:
        if im.format == "WEBP":
            # WebP has no gray mode: gray comes back as colour, channels within 1.
            red, green, blue = im.split()
            for other in (green, blue):
                assert max(ImageChops.difference(red, other).tobytes()) <= 1
            return list(red.tobytes())
        assert im.mode == "L"
        return list(im.tobytes())


def _photo_like(width: int, height: int) -> Image.Image:
    """Return a smooth RGB image with gradients and blurred noise, like a photo."""
    size = (width, height)
    red = Image.linear_gradient("L").resize(size)
    green = Image.radial_gradient("L").resize(size)
    blue = Image.effect_noise(size, 40).filter(ImageFilter.GaussianBlur(3))
    return Image.merge("RGB", (red, green, blue))


def _psnr_db(a: Image.Image, b: Image.Image) -> float:
    histogram = ImageChops.difference(a, b).histogram()
    squared = sum(count * value**2 for value, count in enumerate(histogram))
    mse = squared / (a.width * a.height)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _gray_png(width: int, height: int, idat: bytes | None) -> bytes:
    """Return an 8-bit gray PNG built by hand; ``idat=None`` leaves out the data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = b"" if idat is None else _png_chunk(b"IDAT", zlib.compress(idat))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + data
        + _png_chunk(b"IEND", b"")
    )


def _s15_fixed16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _k_only_cmyk_profile() -> bytes:
    """Return an ICC v2 CMYK profile whose lightness depends on K alone.

    Pillow cannot create CMYK profiles, so this builds the smallest one lcms
    accepts: a 2-point lut8 A2B0 table to Lab. It maps pure cyan to white,
    which plain conversion would not, so the output shows which path ran.
    """
    d50 = _s15_fixed16(0.9642) + _s15_fixed16(1.0) + _s15_fixed16(0.8249)
    identity = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    # Grid corners in C, M, Y, K order, K varying fastest: white when K=0.
    clut = b"".join(
        bytes([0 if k else 255, 128, 128]) for _ in range(8) for k in (0, 1)
    )
    a2b0 = (
        b"mft1"
        + bytes(4)
        + bytes([4, 3, 2, 0])
        + b"".join(_s15_fixed16(v) for v in identity)
        + bytes(range(256)) * 4
        + clut
        + bytes(range(256)) * 3
    )
    description = b"k only\x00"
    desc = (
        b"desc"
        + bytes(4)
        + struct.pack(">I", len(description))
        + description
        + bytes(4 + 4 + 2 + 1 + 67)
    )
    tags = [
        (b"desc", desc),
        (b"wtpt", b"XYZ " + bytes(4) + d50),
        (b"cprt", b"text" + bytes(4) + b"none\x00"),
        (b"A2B0", a2b0),
    ]
    first_offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, payload in tags:
        padded = payload + bytes(-len(payload) % 4)
        table += signature + struct.pack(">II", first_offset + len(body), len(padded))
        body += padded
    header = (
        struct.pack(">I", first_offset + len(body))
        + b"lcms"
        + bytes([2, 0x10, 0, 0])
        + b"prtr"
        + b"CMYK"
        + b"Lab "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + bytes(16 + 8 + 4)
        + d50
        + bytes(4 + 16 + 28)
    )
    return header + struct.pack(">I", len(tags)) + table + body


# --- output_name ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel_name", "expected"),
    [
        ("a/b.jpg", "a/b.jpg"),
        ("a/b.JPEG", "a/b.JPEG"),
        ("b.png", "b.png"),
        ("c.webp", "c.webp"),
        ("d.tif", "d.tif"),
        ("e.TIFF", "e.TIFF"),
        ("a/b.gif", "a/b.gif.png"),
        ("x.bmp", "x.bmp.png"),
        ("photo.jfif", "photo.jfif.png"),
        ("no_extension", "no_extension.png"),
        ("dir.jpg/inner", "dir.jpg/inner.png"),
        (".png", ".png.png"),
    ],
)
def test_output_name_when_given_table_input_maps_as_listed(
    rel_name: str, expected: str
) -> None:
    assert output_name(rel_name) == expected


_SEGMENT = st.text(alphabet="abcXYZ._-", min_size=1, max_size=6).filter(
    lambda s: s not in (".", "..")
)
_EXTENSION = st.sampled_from(
    ["", ".jpg", ".JPG", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".gif", ".bmp"]
)
_REL_NAME = st.builds(
    lambda parts, ext: "/".join(parts) + ext,
    st.lists(_SEGMENT, min_size=1, max_size=3),
    _EXTENSION,
)


@settings(max_examples=50)
@given(st.sets(_REL_NAME, max_size=20))
def test_output_name_when_names_differ_gives_distinct_outputs(names: set[str]) -> None:
    names = {n for n in names if not n.endswith(".png") or n[:-4] not in names}

    outputs = {output_name(n) for n in names}

    assert len(outputs) == len(names)


@settings(max_examples=50)
@given(_REL_NAME)
@example("...")  # found by hypothesis: splitext sees no suffix in "....png"
def test_output_name_when_applied_twice_is_unchanged(rel_name: str) -> None:
    once = output_name(rel_name)

    assert output_name(once) == once
    assert once.rsplit(".", 1)[-1].lower() in {
        "jpg",
        "jpeg",
        "png",
        "webp",
        "tif",
        "tiff",
    }


def test_output_name_when_sibling_already_has_png_suffix_collides() -> None:
    # Documented limit: callers listing a folder must detect this pair themselves.
    assert output_name("x.gif") == output_name("x.gif.png")


# --- grayscale and formats -------------------------------------------------------


def test_convert_when_pure_red_png_gives_bt601_luma() -> None:
    data = _encode(Image.new("RGB", (4, 3), (255, 0, 0)), "PNG")

    result = _convert(data, "red.png")

    assert result.format == "PNG"
    assert (result.width, result.height) == (4, 3)
    assert set(_pixels(result)) == {RED_LUMA}
    assert result.note is None


@pytest.mark.parametrize(
    ("name", "expected_format"),
    [
        ("a.jpg", "JPEG"),
        ("a.jpeg", "JPEG"),
        ("a.png", "PNG"),
        ("a.webp", "WEBP"),
        ("a.tif", "TIFF"),
        ("a.tiff", "TIFF"),
        ("a.gif", "PNG"),
        ("a.bmp", "PNG"),
    ],
)
def test_convert_when_named_by_extension_writes_that_format_in_mode_l(
    name: str, expected_format: str
) -> None:
    data = _encode(_photo_like(32, 24), "PNG")

    result = _convert(data, name)

    with _open(result) as im:
        assert (im.format, im.size) == (expected_format, (32, 24))
    assert result.format == expected_format
    assert len(_pixels(result)) == 32 * 24


@pytest.mark.parametrize("name", ["m.jpg", "m.png", "m.webp", "m.tif"])
def test_convert_when_input_has_exif_and_icc_writes_neither(name: str) -> None:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = _encode(_photo_like(16, 16), "JPEG", exif=exif, icc_profile=icc)

    result = _convert(data, name)

    with _open(result) as im:
        assert "icc_profile" not in im.info
        assert 0x010F not in im.getexif()


def test_convert_when_quality_lower_writes_smaller_jpeg() -> None:
    data = _encode(_photo_like(120, 80), "PNG")

    low = _convert(data, "q.jpg", ImageOptions(jpeg_quality=30))
    high = _convert(data, "q.jpg", ImageOptions(jpeg_quality=95))

    assert len(low.data) < len(high.data)


@pytest.mark.parametrize(
    "options",
    [{"max_pixels": 0}, {"jpeg_quality": 0}, {"jpeg_quality": 101}],
)
def test_image_options_when_out_of_range_raises_config_error(
    options: dict[str, int],
) -> None:
    with pytest.raises(ConfigError):
        ImageOptions(**options)


def test_module_exports_when_imported_lists_public_api() -> None:
    expected = {
        "ConvertedImage",
        "ImageError",
        "ImageOptions",
        "convert_to_grayscale",
        "output_name",
    }

    assert set(imaging.__all__) == expected
    assert all(hasattr(imaging, name) for name in expected)
    assert issubclass(ImageError, InputError)


# --- JPEG --------------------------------------------------------------------


@pytest.fixture
def draft_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Record every JpegImageFile.draft call while still running it."""
    calls: list[tuple[Any, ...]] = []
    original: Callable[..., Any] = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, *args: Any) -> Any:
        calls.append(args)
        return original(self, *args)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


def test_convert_when_rgb_jpeg_asks_libjpeg_for_luma(
    draft_calls: list[tuple[Any, ...]],
) -> None:
    data = _encode(_photo_like(64, 48), "JPEG", quality=95)

    result = _convert(data, "p.png")

    assert draft_calls == [("L", (64, 48))]
    assert (result.width, result.height) == (64, 48)


def test_convert_when_jpeg_draft_compared_to_naive_convert_is_close() -> None:
    data = _encode(_photo_like(320, 240), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as im:
        naive = im.convert("L")

    # ".jfif" gets ".png" appended: lossless output isolates the decoder.
    result = _convert(data, "photo.jfif")

    with _open(result) as ours:
        assert _psnr_db(ours, naive) > 40


def test_convert_when_photo_like_1200x800_jpeg_writes_jpeg() -> None:
    data = _encode(_photo_like(1200, 800), "JPEG", quality=90)

    result = _convert(data, "photos/big.jpg")

    assert (result.format, result.width, result.height) == ("JPEG", 1200, 800)
    assert result.note is None
    with _open(result) as im:
        assert (im.mode, im.size) == ("L", (1200, 800))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_convert_when_exif_orientation_6_rotates_to_portrait(fmt: str) -> None:
    landscape = Image.new("RGB", (40, 20), "black")
    landscape.paste((255, 255, 255), (0, 0, 10, 5))  # bright top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = _encode(landscape, fmt, exif=exif)

    result = _convert(data, "portrait.png")

    assert (result.width, result.height) == (20, 40)
    pixels = _pixels(result)
    assert pixels[4 * 20 + 17] > 200  # the corner is now top-right
    assert pixels[4 * 20 + 2] < 50
    assert pixels[35 * 20 + 17] < 50
    with _open(result) as im:
        assert 0x0112 not in im.getexif()


# --- transparency --------------------------------------------------------------


def _rgba_png() -> bytes:
    im = Image.new("RGBA", (3, 1))
    im.putpixel((0, 0), (0, 0, 0, 0))
    im.putpixel((1, 0), (0, 0, 0, 255))
    im.putpixel((2, 0), (0, 0, 0, 128))
    return _encode(im, "PNG")


def _la_png() -> bytes:
    im = Image.new("LA", (2, 1))
    im.putpixel((0, 0), (0, 0))
    im.putpixel((1, 0), (0, 255))
    return _encode(im, "PNG")


def _palette(fmt: str, transparency: int | bytes) -> bytes:
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 255, 0, 0])  # index 0 black, index 1 red
    im.putpixel((1, 0), 1)
    return _encode(im, fmt, transparency=transparency)


def _keyed(mode: str, key: int | tuple[int, int, int]) -> bytes:
    im = Image.new(mode, (2, 1), key)
    im.putpixel((1, 0), 0 if mode == "L" else (0, 0, 1))
    return _encode(im, "PNG", transparency=key)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(_rgba_png, [255, 0, 127], id="RGBA"),
        pytest.param(_la_png, [255, 0], id="LA"),
        pytest.param(lambda: _palette("PNG", 0), [255, RED_LUMA], id="P-tRNS-index"),
        pytest.param(
            lambda: _palette("PNG", b"\x00\xff"), [255, RED_LUMA], id="P-tRNS-alphas"
        ),
        pytest.param(lambda: _palette("GIF", 0), [255, RED_LUMA], id="GIF"),
        pytest.param(lambda: _keyed("L", 7), [255, 0], id="L-tRNS-key"),
        pytest.param(lambda: _keyed("RGB", (9, 9, 9)), [255, 0], id="RGB-tRNS-key"),
    ],
)
def test_convert_when_pixels_transparent_composites_over_white(
    make: Callable[[], bytes], expected: list[int]
) -> None:
    data = make()

    result = _convert(data, "t.png")

    assert _pixels(result) == pytest.approx(expected, abs=1)


# --- CMYK ----------------------------------------------------------------------

_CYAN = (255, 0, 0, 0)


def test_convert_when_cmyk_jpeg_without_profile_matches_plain_conversion(
    draft_calls: list[tuple[Any, ...]],
) -> None:
    data = _encode(Image.new("CMYK", (8, 8), _CYAN), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as im:
        plain = im.convert("L").getpixel((4, 4))

    result = _convert(data, "c.png")

    assert draft_calls == []
    assert plain == pytest.approx(179, abs=2)
    assert _pixels(result)[0] == pytest.approx(plain, abs=1)
    assert result.note is None


def test_convert_when_cmyk_has_icc_profile_converts_through_it() -> None:
    icc = _k_only_cmyk_profile()
    data = _encode(
        Image.new("CMYK", (8, 8), _CYAN), "JPEG", quality=95, icc_profile=icc
    )

    result = _convert(data, "c.png")

    # The profile says paper white whenever K is 0; plain conversion says 179.
    assert min(_pixels(result)) >= 250
    assert result.note is None


def test_convert_when_cmyk_icc_profile_broken_falls_back_with_note() -> None:
    image = Image.new("CMYK", (8, 8), _CYAN)
    data = _encode(image, "TIFF", icc_profile=b"not an ICC profile")

    result = _convert(data, "c.tif")

    assert set(_pixels(result)) == {179}
    assert result.note is not None
    assert "ICC profile unusable" in result.note


# --- 16-bit and float ----------------------------------------------------------


def _sixteen_bit(mode: str, fmt: str, **params: Any) -> bytes:
    pack = ">4H" if mode == "I;16B" else "<4H"
    im = Image.frombytes(mode, (4, 1), struct.pack(pack, 0, 256, 32768, 65535))
    return _encode(im, fmt, **params)


@pytest.mark.parametrize(
    ("mode", "fmt"), [("I;16", "PNG"), ("I;16", "TIFF"), ("I;16B", "TIFF")]
)
def test_convert_when_16_bit_scales_to_8_bit_without_clipping(
    mode: str, fmt: str
) -> None:
    data = _sixteen_bit(mode, fmt)

    result = _convert(data, "deep.png")

    assert _pixels(result) == [0, 1, 128, 255]


def test_convert_when_32_bit_int_clamps_to_16_bit_range_first() -> None:
    im = Image.new("I", (4, 1))
    im.putdata([-5, 256, 65535, 70000])
    data = _encode(im, "TIFF")

    result = _convert(data, "i32.png")

    assert _pixels(result) == [0, 1, 255, 255]


def test_convert_when_16_bit_png_has_transparent_key_makes_it_white() -> None:
    data = _sixteen_bit("I;16", "PNG", transparency=256)

    result = _convert(data, "key16.png")

    assert _pixels(result) == [0, 255, 128, 255]


def test_convert_when_float_rounds_and_clips_to_0_255() -> None:
    im = Image.new("F", (4, 1))
    im.putdata([-5.0, 100.4, 100.6, 300.0])
    data = _encode(im, "TIFF")

    result = _convert(data, "float.png")

    assert _pixels(result) == [0, 100, 101, 255]


# --- frames --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name"), [("GIF", "a.gif"), ("PNG", "a.png"), ("WEBP", "a.webp")]
)
def test_convert_when_animated_converts_first_frame_with_note(
    fmt: str, name: str
) -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in ("white", "black", "red")]
    data = _encode(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=100
    )

    result = _convert(data, name)

    assert result.note == "animated: first of 3 frames converted"
    assert min(_pixels(result)) >= 250


def test_convert_when_multi_page_tiff_converts_first_page_with_note() -> None:
    pages = [Image.new("L", (8, 8), value) for value in (200, 10)]
    data = _encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])

    result = _convert(data, "scan.tif")

    assert result.note == "multi-frame: first of 2 frames converted"
    assert set(_pixels(result)) == {200}


# --- refusals ------------------------------------------------------------------


def _reason(data: bytes, name: str, options: ImageOptions | None = None) -> str:
    with pytest.raises(ImageError) as caught:
        _convert(data, name, options)
    message = str(caught.value)
    assert message.startswith(f"{name}: ")
    assert message.endswith(("the file", "max_pixels", "MAX_IMAGE_PIXELS", "it"))
    reason: str = caught.value.reason
    return reason


def test_convert_when_pixels_exceed_limit_raises_too_many_pixels() -> None:
    data = _encode(Image.new("L", (20, 20)), "PNG")

    reason = _reason(data, "big.png", ImageOptions(max_pixels=399))

    assert reason == "too_many_pixels"


def test_convert_when_header_too_large_refuses_before_decoding() -> None:
    # No pixel data at all: decoding would fail as truncated, not as too large.
    data = _gray_png(2000, 2000, idat=None)

    reason = _reason(data, "bomb.png", ImageOptions(max_pixels=1_000_000))

    assert reason == "too_many_pixels"


def test_convert_when_pillow_refuses_decompression_bomb_raises_too_many_pixels() -> (
    None
):
    # 400 Mpx passes our limit here but is over twice Pillow's MAX_IMAGE_PIXELS.
    data = _gray_png(20_000, 20_000, idat=None)

    reason = _reason(data, "bomb.png", ImageOptions(max_pixels=10**9))

    assert reason == "too_many_pixels"


def test_convert_when_file_empty_raises_empty() -> None:
    assert _reason(b"", "photos/empty.jpg") == "empty"


def test_convert_when_text_renamed_jpg_raises_unidentified() -> None:
    data = b"shopping list: eggs, milk\n"

    assert _reason(data, "notes.jpg") == "unidentified"


def test_convert_when_eps_raises_unidentified_without_running_ghostscript() -> None:
    data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"

    assert _reason(data, "figure.eps") == "unidentified"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_convert_when_cut_short_raises_truncated(fmt: str, keep: float) -> None:
    data = _encode(_photo_like(64, 48), fmt)

    reason = _reason(data[: int(len(data) * keep)], "photos/cat.jpg")

    assert reason == "truncated"


@pytest.mark.parametrize("keep_bytes", [4, 12, 40])
def test_convert_when_jpeg_cut_inside_header_raises_truncated(keep_bytes: int) -> None:
    data = _encode(_photo_like(64, 48), "JPEG")

    reason = _reason(data[:keep_bytes], "photos/cat.jpg")

    assert reason == "truncated"


def test_convert_when_truncated_message_names_file_reason_and_fix() -> None:
    data = _encode(_photo_like(64, 48), "JPEG")

    with pytest.raises(ImageError) as caught:
        _convert(data[: len(data) // 2], "photos/cat.jpg")

    message = str(caught.value)
    assert message.startswith("photos/cat.jpg: image file is truncated (")
    assert message.endswith("; re-export or remove the file")


def test_convert_when_data_corrupt_raises_unreadable_with_cause() -> None:
    # Complete file, but every row names PNG filter type 9, which does not exist.
    data = _gray_png(2, 2, idat=b"\x09\x01\x02\x09\x03\x04")

    with pytest.raises(ImageError) as caught:
        _convert(data, "bad.png")

    assert caught.value.reason == "unreadable"
    assert "unrecognized data stream" in str(caught.value)


def test_convert_when_too_wide_for_webp_raises_unwritable() -> None:
    data = _encode(Image.new("L", (16_384, 1)), "PNG")

    assert _reason(data, "wide.webp") == "unwritable"
