"""Convert one image file to 8-bit grayscale; pure Pillow, no Celery and no storage."""

import io
import posixpath
import re
from dataclasses import dataclass
from typing import BinaryIO

from billiard.exceptions import SoftTimeLimitExceeded
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin, UnidentifiedImageError

from batchgrid.errors import ConfigError, InputError

__all__ = [
    "ConvertedImage",
    "ImageError",
    "ImageOptions",
    "convert_to_grayscale",
    "output_name",
]

#: Output format by lower-case extension; any other input gets ".png" appended.
FORMAT_BY_EXTENSION = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}

#: zlib level for PNG output: Pillow's default, a fair size/speed trade.
PNG_COMPRESS_LEVEL = 6

#: Formats whose multi-frame files are animations rather than pages or previews.
ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})

#: 16-bit to 8-bit lookup, value*255/65535 rounded; Pillow clamps "I" input to 0..65535.
SIXTEEN_TO_EIGHT_BIT = tuple((v * 255 + 32767) // 65535 for v in range(65536))

#: JPEG modes that may be decoded straight to luma (Pillow reports YCbCr as RGB).
YCC_MODES = frozenset({"RGB", "YCbCr"})

#: Formats never opened: loading EPS runs Ghostscript on untrusted input.
REFUSED_FORMATS = frozenset({"EPS"})

#: Modes holding 16 or 32 bits of integer gray per pixel.
WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})

_JPEG_SIGNATURE = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND"
_FIX_HINT = "re-export or remove the file"
#: Files are read in blocks of this size: one read() of max_bytes would reserve
#: all of it up front, a 512 MiB allocation for every small image.
READ_BLOCK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ImageOptions:
    """How to decode and encode images; the defaults suit photographs."""

    #: Refuse images with more pixels than this (decompression bombs), read from
    #: the header before decoding. Pillow's own Image.MAX_IMAGE_PIXELS still
    #: refuses anything above twice its value when the file is opened.
    max_pixels: int = 100_000_000
    #: Quality for JPEG output, also used for WEBP output.
    jpeg_quality: int = 90
    #: Refuse files larger than this before reading them whole into memory.
    max_bytes: int = 512 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ConfigError(f"max_pixels={self.max_pixels}: must be at least 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(
                f"jpeg_quality={self.jpeg_quality}: must be between 1 and 100"
            )


@dataclass(frozen=True)
class ConvertedImage:
    """One converted image: the encoded file and what it holds."""

    data: bytes
    format: str
    width: int
    height: int
    note: str | None


class ImageError(InputError):
    """Raised when one image cannot be converted; ``reason`` is a short code.

    Reasons: ``empty``, ``too_large``, ``unidentified``, ``truncated``,
    ``too_many_pixels``, ``unreadable`` and ``unwritable`` (the output format
    cannot hold the image, or the output could not be written).
    """

    reason: str

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _extension(rel_name: str) -> str:
    """The lowercased suffix from the last dot of the file name (``.jpg``).

    As ``posixpath.splitext``, but only a first dot marks a hidden name, so
    ``.png`` has no suffix and ``....png`` ends in ``.png``: that keeps
    :func:`output_name` idempotent for names of dots (``...``).
    """
    base = posixpath.basename(rel_name)
    dot = base.rfind(".")
    return base[dot:].lower() if dot > 0 else ""


def output_name(rel_name: str) -> str:
    """Return the output name for an input's relative posix name.

    Example: ``"a/b.JPG"`` stays ``"a/b.JPG"``; ``"a/b.gif"`` becomes
    ``"a/b.gif.png"``. Distinct inputs get distinct outputs, except an input
    that already equals another input plus ``".png"`` (``x.gif`` and
    ``x.gif.png``); callers listing a whole folder must check for that.
    """
    if _extension(rel_name) in FORMAT_BY_EXTENSION:
        return rel_name
    return rel_name + ".png"


def convert_to_grayscale(
    src: BinaryIO, *, name: str, options: ImageOptions
) -> ConvertedImage:
    """Decode one image file and return it as 8-bit grayscale ('L'), encoded.

    Example: ``convert_to_grayscale(f, name="a/b.gif", options=ImageOptions())``
    returns a PNG (see :func:`output_name`); a bad file raises :class:`ImageError`.
    """
    data = _read_at_most(src, options.max_bytes)
    if len(data) > options.max_bytes:
        raise ImageError(
            "too_large",
            f"{name}: larger than {options.max_bytes} bytes; raise "
            "BATCHGRID_MAX_IMAGE_BYTES or downscale the file",
        )
    if not data:
        raise ImageError("empty", f"{name}: file is empty (0 bytes); {_FIX_HINT}")
    out_format = FORMAT_BY_EXTENSION[_extension(output_name(name))]

    try:
        gray, note = _decode_gray(data, name=name, max_pixels=options.max_pixels)
    except (ImageError, SoftTimeLimitExceeded, MemoryError):
        # Our own verdicts, and limits the task must see, pass through.
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            "too_many_pixels",
            f"{name}: too many pixels for Pillow's limit ({exc}); "
            "downscale the image or raise PIL.Image.MAX_IMAGE_PIXELS",
        ) from exc
    except UnidentifiedImageError as exc:
        if _lacks_end_marker(data):
            raise _truncated(name, exc) from exc
        raise ImageError(
            "unidentified",
            f"{name}: not an image Pillow recognises (or its header is damaged); "
            f"{_FIX_HINT}",
        ) from exc
    except Exception as exc:
        # Decoders raise OSError, SyntaxError, ValueError and others on bad data.
        if "truncated" in str(exc).lower() or _lacks_end_marker(data):
            raise _truncated(name, exc) from exc
        raise ImageError(
            "unreadable",
            f"{name}: cannot decode image ({type(exc).__name__}: {exc}); {_FIX_HINT}",
        ) from exc

    with gray:
        encoded = _encode(gray, out_format, name=name, options=options)
        return ConvertedImage(
            data=encoded,
            format=out_format,
            width=gray.width,
            height=gray.height,
            note=note,
        )


def _read_at_most(src: BinaryIO, limit: int) -> bytes:
    """The file's bytes, or its first ``limit`` + 1 if it is longer than ``limit``."""
    blocks: list[bytes] = []
    size = 0
    while size <= limit:
        block = src.read(min(READ_BLOCK_BYTES, limit + 1 - size))
        if not block:
            break
        blocks.append(block)
        size += len(block)
    return b"".join(blocks)


def _decode_gray(
    data: bytes, *, name: str, max_pixels: int
) -> tuple[Image.Image, str | None]:
    Image.init()
    formats = [f for f in Image.ID if f not in REFUSED_FORMATS]
    with Image.open(io.BytesIO(data), formats=formats) as im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageError(
                "too_many_pixels",
                f"{name}: {width}x{height} is {width * height} pixels, more than "
                f"the limit of {max_pixels}; downscale the image, or raise the job's "
                "max_pixels or BATCHGRID_MAX_IMAGE_PIXELS",
            )
        n_frames = int(getattr(im, "n_frames", 1))
        animated = im.format in ANIMATED_FORMATS
        if isinstance(im, JpegImagePlugin.JpegImageFile) and im.mode in YCC_MODES:
            # libjpeg hands back the Y channel directly; CMYK JPEGs are left alone.
            im.draft("L", im.size)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        gray, note = _flatten_to_gray(im)

    if n_frames > 1:
        kind = "animated" if animated else "multi-frame"
        frames_note = f"{kind}: first of {n_frames} frames converted"
        note = frames_note if note is None else f"{frames_note}; {note}"
    return gray, note


def _flatten_to_gray(im: Image.Image) -> tuple[Image.Image, str | None]:
    """Return a new 'L' image of ``im``, transparency composited over white."""
    if im.mode in WIDE_GRAY_MODES:
        return _wide_gray_to_gray(im), None
    if im.mode == "F":
        # Floats are taken as 0..255 gray: rounded, and clipped outside that range.
        return im.point(lambda v: v + 0.5).convert("L"), None
    if im.mode == "CMYK":
        return _cmyk_to_gray(im)
    if im.has_transparency_data:
        with_alpha = im if im.mode in ("LA", "RGBA") else _with_alpha(im)
        return _over_white(with_alpha.convert("L"), with_alpha.getchannel("A")), None
    if im.mode == "LAB":
        return im.convert("RGB").convert("L"), None
    return im.convert("L"), None


def _with_alpha(im: Image.Image) -> Image.Image:
    """Return ``im`` as 'LA' or 'RGBA', turning a transparent colour key into alpha."""
    if im.mode in ("1", "L", "La"):
        return im.convert("LA")
    return im.convert("RGBA")


def _over_white(luma: Image.Image, alpha: Image.Image) -> Image.Image:
    """Return ``luma`` composited over white through ``alpha`` (0 = transparent)."""
    return Image.composite(luma, Image.new("L", luma.size, 255), alpha)


def _wide_gray_to_gray(im: Image.Image) -> Image.Image:
    """Scale 16-bit gray to 8 bits (65535 -> 255, 256 -> 1), never clipping at 255."""
    wide = im if im.mode == "I" else im.convert("I")
    gray = wide.point(SIXTEEN_TO_EIGHT_BIT, "L")
    key = im.info.get("transparency")
    if isinstance(key, int):
        # A PNG tRNS colour key: pixels equal to it are fully transparent.
        opaque = wide.point([0 if v == key else 255 for v in range(65536)], "L")
        return _over_white(gray, opaque)
    return gray


def _cmyk_to_gray(im: Image.Image) -> tuple[Image.Image, str | None]:
    """Convert CMYK to gray through its embedded ICC profile, if it has one."""
    icc = im.info.get("icc_profile")
    if not icc:
        return im.convert("L"), None
    try:
        rgb = ImageCms.profileToProfile(
            im,
            ImageCms.ImageCmsProfile(io.BytesIO(icc)),
            ImageCms.createProfile("sRGB"),
            outputMode="RGB",
        )
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        note = f"CMYK ICC profile unusable ({exc}); converted without it"
        return im.convert("L"), note
    assert rgb is not None  # inPlace=False always returns the new image
    return rgb.convert("L"), None


def _encode(
    gray: Image.Image, out_format: str, *, name: str, options: ImageOptions
) -> bytes:
    gray.info.clear()  # no EXIF, ICC or transparency carried over from the input
    buffer = io.BytesIO()
    try:
        if out_format == "JPEG":
            gray.save(buffer, "JPEG", quality=options.jpeg_quality, optimize=False)
        elif out_format == "PNG":
            gray.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
        elif out_format == "WEBP":
            gray.save(buffer, "WEBP", quality=options.jpeg_quality)
        else:
            gray.save(buffer, out_format)
    except (OSError, ValueError) as exc:
        # e.g. WEBP stops at 16383 pixels a side and JPEG at 65500.
        raise ImageError(
            "unwritable",
            f"{name}: cannot write {gray.width}x{gray.height} as {out_format} "
            f"({exc}); rename the input to another extension or downscale it",
        ) from exc
    return buffer.getvalue()


def _lacks_end_marker(data: bytes) -> bool:
    """Return whether ``data`` starts as a JPEG or PNG but lacks its end marker."""
    tail = data.rstrip(b"\x00")[-16:]
    if data.startswith(_JPEG_SIGNATURE):
        return _JPEG_END not in tail
    if data.startswith(_PNG_SIGNATURE):
        return _PNG_END not in tail
    return False


def _truncated(name: str, exc: BaseException) -> ImageError:
    # Pillow's texts name the in-memory buffer ("<_io.BytesIO object at 0x…>").
    detail = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))
    detail = detail.removeprefix("image file is truncated").strip(" ()")
    suffix = f" ({detail})" if detail else ""
    return ImageError(
        "truncated", f"{name}: image file is truncated{suffix}; {_FIX_HINT}"
    )
