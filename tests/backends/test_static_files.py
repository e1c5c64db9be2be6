"""`backends.static_files`: the generated assets (deterministic, valid PNG and PDF of the
sizes the benchmarks need), the validators and path rules, and a site read from a directory."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import pytest

from backends.static_files import (
    BUILTIN_MTIME,
    PDF_SIZE,
    StaticFile,
    StaticSite,
    generate_builtin_assets,
    normalize_request_path,
    render_pdf,
)
from httpio.errors import ClientError, RouteNotFound
from httpio.protocol import Headers

# -- static assets ------------------------------------------------------------------------------


def test_builtin_assets_are_deterministic() -> None:
    assert generate_builtin_assets() == generate_builtin_assets()


def test_png_is_a_valid_40kb_png() -> None:
    png = generate_builtin_assets()["image.png"]
    assert 35_000 <= len(png) <= 45_000
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + data) == crc, kind
        chunks[kind] = data
        pos += 12 + length
    assert list(chunks) == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 3 * width)


def test_pdf_is_exactly_one_megabyte_with_a_consistent_xref() -> None:
    pdf = generate_builtin_assets()["large.pdf"]
    assert len(pdf) == PDF_SIZE
    assert pdf.startswith(b"%PDF-1.4\n") and pdf.endswith(b"%%EOF\n")
    startxref = int(pdf.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    lines = pdf[startxref:].split(b"\n")
    assert lines[0] == b"xref"
    count = int(lines[1].split()[1])
    for number in range(1, count):
        offset = int(lines[2 + number][:10])
        assert pdf[offset:].startswith(b"%d 0 obj\n" % number)
    streams = list(re.finditer(rb"/Length (\d+) >>\nstream\n", pdf))
    assert len(streams) == 40
    for match in streams:
        end = match.end() + int(match.group(1))
        assert pdf[end : end + 9] == b"endstream"
    assert b"/Count 40" in pdf


def test_pdf_of_another_size_is_exact_too() -> None:
    assert len(render_pdf(size=300_000)) == 300_000


def _file(body: bytes = b"x", mtime: int = BUILTIN_MTIME) -> StaticFile:
    return StaticFile.build("/a.css", body, mtime)


def test_static_file_headers() -> None:
    f = _file()
    assert f.content_type == b"text/css; charset=utf-8"
    assert f.etag.startswith(b'"') and f.etag.endswith(b'"')
    headers = dict(f.validator_headers())
    assert headers[b"last-modified"] == b"Wed, 01 Aug 2018 00:00:00 GMT"
    assert headers[b"cache-control"] == b"public, max-age=60"
    assert StaticFile.build("/x.bin", b"", 0).content_type == b"application/octet-stream"


def asking(if_none_match: bytes | None, if_modified_since: bytes | None) -> Headers:
    """The conditional fields of a request (absent ones left out)."""
    fields = [(b"if-none-match", if_none_match), (b"if-modified-since", if_modified_since)]
    return [(name, value) for name, value in fields if value is not None]


def test_if_none_match_wins_over_if_modified_since() -> None:
    f = _file()
    late = b"Sat, 01 Sep 2018 00:00:00 GMT"
    early = b"Sun, 01 Jul 2018 00:00:00 GMT"
    assert f.not_modified_for(asking(f.etag, None))
    assert f.not_modified_for(asking(None, late))
    assert f.not_modified_for(asking(None, b"Wed, 01 Aug 2018 00:00:00 GMT"))
    assert not f.not_modified_for(asking(None, early))
    assert not f.not_modified_for(asking(b'"other"', late))  # If-None-Match decides alone
    assert not f.not_modified_for(asking(None, b"not a date"))
    assert not f.not_modified_for(asking(None, None))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("/", "/index.html"), ("/a/", "/a/index.html"), ("/a%20b.css", "/a b.css")],
)
def test_normalize_request_path(raw: str, expected: str) -> None:
    assert normalize_request_path(raw) == expected


@pytest.mark.parametrize("raw", ["/../etc/passwd", "/a/%2e%2e/b", "/a%00", "/a\\b"])
def test_normalize_refuses_traversal(raw: str) -> None:
    with pytest.raises(ClientError):
        normalize_request_path(raw)


def test_site_from_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "index.html").write_bytes(b"<p>hi</p>")
    (tmp_path / "sub" / "data.json").write_bytes(b"{}")
    (tmp_path / "link.txt").symlink_to("/etc/hostname")
    site = StaticSite.from_directory(tmp_path)
    assert site.paths() == ["/index.html", "/sub/data.json"]
    assert site.lookup("/").body == b"<p>hi</p>"
    assert site.lookup("/sub/data.json").content_type == b"application/json"
    with pytest.raises(RouteNotFound):
        site.lookup("/link.txt")
    with pytest.raises(ClientError):
        site.lookup("/%ff")
    assert "files=2" in repr(site)
    assert site.statistics()["bytes"] == len(b"<p>hi</p>") + 2


def test_site_from_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        StaticSite.from_directory(tmp_path / "nope")
