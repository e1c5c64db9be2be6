"""The original's http_root names (`index.html`, `test.css`, `test.jpg`, `test.pdf`), served by
the demo backend as its benchmark script fetched them: status, length, type, validators."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import trio

from backends.app import BackendApp
from backends.static_files import (
    BUILTIN_MTIME,
    ORIGINAL_PDF_SIZE,
    PACKAGED_DIR,
    StaticSite,
    generate_builtin_assets,
    read_packaged_assets,
)
from httpio.run import serve_tcp
from tests.backends.test_app import fetch

# name -> (content type, size the original's file had, how far ours may be from it)
ORIGINAL_FILES = {
    "/index.html": (b"text/html; charset=utf-8", 554, 40),
    "/test.css": (b"text/css; charset=utf-8", 58, 0),
    "/test.jpg": (b"image/jpeg", 41_867, 1_000),
    "/test.pdf": (b"application/pdf", 928_147, 0),
}


def jpeg_segments(data: bytes) -> dict[int, bytes]:
    """Marker -> payload of a baseline JPEG's header segments, up to the scan (ITU T.81 B.1)."""
    assert data[:2] == b"\xff\xd8", "no SOI"
    assert data[-2:] == b"\xff\xd9", "no EOI"
    pos, segments = 2, {}
    while True:
        assert data[pos] == 0xFF, f"no marker at {pos}"
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segments[marker] = data[pos + 4 : pos + 2 + length]
        pos += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return segments


def test_the_packaged_files_are_the_ones_shipped() -> None:
    assert sorted(read_packaged_assets()) == ["index.html", "test.css", "test.jpg"]
    assert (PACKAGED_DIR / "test.jpg").stat().st_size == len(read_packaged_assets()["test.jpg"])


def test_test_jpg_is_a_real_baseline_jpeg() -> None:
    jpg = generate_builtin_assets()["test.jpg"]
    segments = jpeg_segments(jpg)
    assert segments[0xE0].startswith(b"JFIF\x00")
    precision, height, width, components = struct.unpack(">BHHB", segments[0xC0][:6])
    assert (precision, width, height, components) == (8, 512, 384, 3)
    assert 0xC4 in segments and 0xDB in segments  # Huffman and quantisation tables


def test_test_pdf_has_the_original_size() -> None:
    """Its structure is the generator's, checked on large.pdf in tests/backends/test_app.py; pdfinfo
    reads it below."""
    pdf = generate_builtin_assets()["test.pdf"]
    assert len(pdf) == ORIGINAL_PDF_SIZE
    assert pdf.startswith(b"%PDF-1.4\n") and pdf.endswith(b"%%EOF\n")
    assert pdf != generate_builtin_assets()["large.pdf"][:ORIGINAL_PDF_SIZE]


@pytest.mark.skipif(shutil.which("pdfinfo") is None, reason="pdfinfo (poppler-utils) missing")
def test_pdfinfo_reads_test_pdf(tmp_path: Path) -> None:
    path = tmp_path / "test.pdf"
    path.write_bytes(generate_builtin_assets()["test.pdf"])
    info = subprocess.run(
        ["pdfinfo", str(path)], capture_output=True, text=True, timeout=30, check=True
    )
    assert re.search(r"^Pages:\s+40$", info.stdout, re.M), info.stdout
    assert "Syntax Error" not in info.stderr


def test_index_html_links_both_sets() -> None:
    page = generate_builtin_assets()["index.html"]
    for name in (b"test.css", b"test.jpg", b"test.pdf", b"style.css", b"image.png", b"large.pdf"):
        assert b'"' + name + b'"' in page, name


@pytest.fixture
async def backend_port(nursery: trio.Nursery) -> int:
    app = BackendApp(StaticSite.builtin(), name="original-files")
    port: int = await nursery.start(serve_tcp, app, 0)
    return port


@pytest.mark.parametrize("path", sorted(ORIGINAL_FILES))
async def test_served_with_type_length_and_validators(backend_port: int, path: str) -> None:
    ctype, original_size, tolerance = ORIGINAL_FILES[path]
    reply = await fetch(backend_port, "GET", path)
    assert reply.status == 200 and reply.complete
    assert reply.headers[b"content-type"] == ctype
    assert int(reply.headers[b"content-length"]) == len(reply.body)
    assert abs(len(reply.body) - original_size) <= tolerance
    assert reply.headers[b"last-modified"] == b"Wed, 01 Aug 2018 00:00:00 GMT"
    assert reply.headers[b"cache-control"] == b"public, max-age=60"
    etag = reply.headers[b"etag"]
    again = await fetch(backend_port, "GET", path, [("if-none-match", etag)])
    assert again.status == 304 and again.body == b"" and again.headers[b"etag"] == etag
    since = [("if-modified-since", "Sat, 01 Sep 2018 00:00:00 GMT")]
    assert (await fetch(backend_port, "GET", path, since)).status == 304
    other = await fetch(backend_port, "GET", path, [("if-none-match", '"other"')])
    assert other.status == 200 and other.body == reply.body
    head = await fetch(backend_port, "HEAD", path)
    assert head.status == 200 and head.body == b""
    assert int(head.headers[b"content-length"]) == len(reply.body)


async def test_the_scripts_missing_name_is_a_404(backend_port: int) -> None:
    reply = await fetch(backend_port, "GET", "/test.hs")
    assert reply.status == 404 and reply.json()["error"] == "not_found"


def test_every_instance_builds_byte_identical_files() -> None:
    one, two = StaticSite.builtin(), StaticSite.builtin()
    for path in ORIGINAL_FILES:
        a, b = one.lookup(path), two.lookup(path)
        assert (a.body, a.etag, a.last_modified) == (b.body, b.etag, BUILTIN_MTIME)


def test_an_original_http_root_is_served_as_is(tmp_path: Path) -> None:
    """``backend --root`` (and the topology's ``backends: {root: ...}``) on a copy of the
    original's directory: its names only, with its own bytes."""
    for name, body in generate_builtin_assets().items():
        if name in ("index.html", "test.css", "test.jpg", "test.pdf"):
            (tmp_path / name).write_bytes(body)
    site = StaticSite.from_directory(tmp_path)
    assert site.paths() == sorted(ORIGINAL_FILES)
    assert site.lookup("/").body == generate_builtin_assets()["index.html"]
