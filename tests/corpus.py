"""A corpus of broken and unusual inputs, made on the fly (no binary files committed).

:func:`write_image_corpus` and :func:`write_csv_corpus` fill a folder and return
what batchgrid should make of each file: ``"ok"`` or the named error it reports.
"""

import io
import os
import struct
import zlib
from pathlib import Path

from PIL import Image

#: Pixels claimed by the bomb header: far over any pixel limit, in a 100-byte file.
BOMB_SIDE = 100_000


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_of_zeros(width: int, height: int, *, rgba: bool = True) -> bytes:
    """A valid PNG of ``width`` x ``height`` black pixels, a few hundred kB at most.

    Decoding it takes ``4 * width * height`` bytes: a decompression bomb when large.
    """
    channels, color_type = (4, 6) if rgba else (1, 0)
    row = b"\x00" * (1 + width * channels)  # filter byte, then the pixels
    packer = zlib.compressobj(1)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def write_slow_pngs(folder: Path, count: int) -> list[Path]:
    """``count`` links to one 6 MP noise PNG, ``slow-00.png`` up: each takes about
    0.4 s to convert, and each is over 8 MiB, so a task holds one."""
    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "slow-00.png"
    noise = Image.effect_noise((3000, 2000), 90)
    Image.merge("RGB", (noise, noise.rotate(180), noise)).save(first, compress_level=1)
    paths = [first]
    for index in range(1, count):
        paths.append(folder / f"slow-{index:02}.png")
        os.link(first, paths[-1])
    return paths


def _bomb_header() -> bytes:
    """A PNG whose header claims 10^10 pixels and whose data is one tiny row."""
    header = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def write_image_corpus(folder: Path) -> dict[str, str]:
    """Broken and unusual images in ``folder``; returns each file's expected
    outcome: "ok" or the reason of its error."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.linear_gradient("L").resize((120, 90))
    rgb = Image.merge("RGB", (photo, photo.rotate(180), photo))
    jpeg = _encoded(rgb, "JPEG", quality=90)
    png = _encoded(rgb, "PNG")

    frames = [
        Image.new("RGB", (40, 30), c).convert("P") for c in ("red", "lime", "blue")
    ]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:])
    palette = Image.new("P", (40, 30), 1)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = 1
    sixteen = Image.new("I;16", (40, 30))
    sixteen.putdata([v * 997 % 65536 for v in range(40 * 30)])
    pages = io.BytesIO()
    rgb.save(pages, "TIFF", save_all=True, append_images=[rgb.rotate(90)])

    files: dict[str, tuple[bytes, str]] = {
        "good.jpg": (jpeg, "ok"),
        "nested/good.png": (png, "ok"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "zero-bytes.png": (b"", "empty"),
        "text-renamed.jpg": (
            b"these are notes, not a photograph\n" * 20,
            "unidentified",
        ),
        "png-named.jpg": (png, "ok"),  # wrong extension: read by content
        "jpeg-named.png": (jpeg, "ok"),
        "header-bomb.png": (_bomb_header(), "too_many_pixels"),
        "cmyk.jpg": (
            _encoded(Image.new("CMYK", (40, 30), (0, 80, 160, 20)), "JPEG"),
            "ok",
        ),
        "gray-16-bit.png": (_encoded(sixteen, "PNG"), "ok"),
        "animated.gif": (animated.getvalue(), "ok"),
        "palette-transparent.png": (_encoded(palette, "PNG"), "ok"),
        "two-pages.tif": (pages.getvalue(), "ok"),
        "la-alpha.png": (_encoded(Image.new("LA", (20, 20), (90, 0)), "PNG"), "ok"),
        "one-bit.bmp": (_encoded(Image.new("1", (33, 17), 1), "BMP"), "ok"),
        "garbage.webp": (bytes(range(256)) * 8, "unidentified"),
        "ünïcode name.png": (png, "ok"),
    }
    for name, (data, _) in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {name: outcome for name, (_, outcome) in files.items()}


#: What the CSV corpus expects: "pandas" (equal to pandas on the whole file),
#: "failed" (the job fails naming the file), "refused" (refused at submission),
#: or a dict of checks on the merged result.
CsvExpectation = str | dict[str, object]


def write_csv_corpus(folder: Path) -> dict[str, tuple[CsvExpectation, dict[str, str]]]:
    """Broken and unusual CSVs; returns for each: (expectation, pandas options)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [f"{'abc'[i % 3]},{i * 1.5:.1f}" for i in range(300)]
    body = "\n".join(rows) + "\n"
    corpus: dict[str, tuple[bytes, CsvExpectation, dict[str, str]]] = {
        "bom.csv": (b"\xef\xbb\xbf" + f"k,v\n{body}".encode(), "pandas", {}),
        "repeated-header.csv": (f"k,v\n{body}k,v\n{body}".encode(), "pandas", {}),
        "mixed-types.csv": (
            (
                "k,v\n" + "a,1\na,2.5\nb,text\nb,\nc, 12 \nc,1e3\na,-0\nb,NA\n" * 40
            ).encode(),
            "pandas",
            {},
        ),
        "latin-1.csv": (
            ("k,v\n" + "Zürich,1\nMünchen,2\nSão Paulo,3\n" * 50).encode("latin-1"),
            "failed",
            {},
        ),
        "quoted-newlines.csv": (
            ("k,v\n" + '"line\none",1\n"a ""quoted"" key",2\n"x,y",3\n' * 60).encode(),
            "pandas",
            {},
        ),
        "thousands.csv": (
            ("k,v\n" + 'a,"1,234.5"\nb,"12,000"\na,7\n' * 50).encode(),
            "pandas",
            {},
        ),
        "ragged.csv": (
            ("k,v\n" + "a,1\nb,2,extra\nc\na,3\n" * 50).encode(),
            {"malformed_rows": 100, "rows": 100},
            {},
        ),
        "long-key.csv": (
            ('k,v\na,1\n"' + "x" * 200_000 + '",2\nb,3\n').encode(),
            {"malformed_rows": 1, "rows": 2},
            {},
        ),
        "crlf-only-header.csv": (b"k,v\r\n", {"rows": 0}, {}),
        "empty.csv": (b"", "refused", {}),
        "png-renamed.csv": (_encoded(Image.new("RGB", (8, 8)), "PNG"), "refused", {}),
        "unclosed-quote.csv": (
            b'k,v\na,1\n"b,2\nc,3\n',
            {"rows": 1, "malformed_rows": 1},  # the quote runs to the end: one field
            {},
        ),
    }
    expected: dict[str, tuple[CsvExpectation, dict[str, str]]] = {}
    for name, (data, expectation, read_options) in corpus.items():
        (folder / name).write_bytes(data)
        expected[name] = (expectation, read_options)
    return expected
