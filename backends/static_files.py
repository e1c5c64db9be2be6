"""The demo backends' static assets: what they are, how they are made, and when to answer 304.

The original benchmarks (`make image`, `make large`) fetched a ~40 KB image and a ~1 MB PDF
through the gateway, so the byte counts matter more than the pictures. Rather than ship a
megabyte of binary in the repository, the built-in set is *generated* in memory at start-up,
deterministically (a few milliseconds): every backend instance of the fleet then serves
byte-identical files with the same strong ETag and the same Last-Modified, which is what lets
a shared proxy cache treat them as one representation (RFC 9110 8.8.3).

- ``image.png``: a real PNG (RFC 2083 chunks, CRC-32, zlib IDAT) of a colour gradient with a
  little noise from SHAKE-256, sized so that it compresses to ~40 KB. The noise is there only
  because a clean gradient deflates to a few hundred bytes.
- ``large.pdf``: a real PDF 1.4 (ISO 32000-1 7.5: header, numbered objects, a byte-exact
  ``xref`` table, trailer, ``startxref``) whose pages carry uncompressed text, padded with
  PDF comments inside the last content stream to exactly ``PDF_SIZE`` bytes.
- ``style.css``: a small stylesheet.
- The names the original's ``http_root`` held, so that its benchmark script and clients find
  them: ``index.html`` (a page linking everything), ``test.css`` and ``test.jpg`` (a real
  512x384 baseline JPEG of ~41 KB, made once with Pillow, which the backends do not need at
  run time) are packaged files under ``backends/static/``; ``test.pdf`` is generated like
  ``large.pdf``, at the original's 928,147 bytes. Packaged files get ``BUILTIN_MTIME`` too, so
  Last-Modified does not depend on when the repository was checked out.

``--root DIR`` replaces the set with the files under DIR, read once into memory (serving from
memory keeps the hot path free of blocking file I/O, which trio would have to push to a
thread). Lookups go through a dict of known paths, so no request path can reach outside it;
``..`` segments are still refused with 400 so that a traversal attempt is visible as such.

Conditional requests follow RFC 9110 13.2.2 as the proxy's cache does (`httpio.conditional`:
``If-None-Match``, weakly compared, wins over ``If-Modified-Since``).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from httpio.conditional import is_not_modified
from httpio.dates import http_date
from httpio.errors import ClientError, RouteNotFound
from httpio.protocol import Headers

# 2018-08-01T00:00:00Z: the era of the original project; fixed so every instance agrees.
BUILTIN_MTIME = 1533081600
CACHE_CONTROL = b"public, max-age=60"
PNG_SIZE_TARGET = 40_000
PDF_SIZE = 1_000_000
ORIGINAL_PDF_SIZE = 928_147  # the original's test.pdf
PACKAGED_DIR = Path(__file__).with_name("static")

CONTENT_TYPES: dict[str, bytes] = {
    ".html": b"text/html; charset=utf-8",
    ".htm": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".json": b"application/json",
    ".txt": b"text/plain; charset=utf-8",
    ".png": b"image/png",
    ".jpg": b"image/jpeg",
    ".jpeg": b"image/jpeg",
    ".gif": b"image/gif",
    ".svg": b"image/svg+xml",
    ".ico": b"image/x-icon",
    ".pdf": b"application/pdf",
    ".mp4": b"video/mp4",
    ".mp3": b"audio/mpeg",
}
DEFAULT_CONTENT_TYPE = b"application/octet-stream"


@dataclass(frozen=True, slots=True)
class StaticFile:
    path: str  # "/image.png"
    body: bytes = field(repr=False)
    content_type: bytes
    etag: bytes  # strong: b'"<hex>"'
    last_modified: int  # seconds since the epoch

    @classmethod
    def build(cls, path: str, body: bytes, mtime: int) -> StaticFile:
        suffix = os.path.splitext(path)[1].lower()
        etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
        return cls(path, body, CONTENT_TYPES.get(suffix, DEFAULT_CONTENT_TYPE), etag, int(mtime))

    def validator_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers a 200 and a 304 share (RFC 9110 15.4.5: a 304 repeats them)."""
        return [
            (b"etag", self.etag),
            (b"last-modified", self.last_modified_http),
            (b"cache-control", CACHE_CONTROL),
        ]

    @property
    def last_modified_http(self) -> bytes:
        return http_date(self.last_modified)

    def not_modified_for(self, request_headers: Headers) -> bool:
        """Whether a conditional GET/HEAD of this file is answered 304 (`httpio.conditional`)."""
        return is_not_modified(request_headers, self.etag, self.last_modified_http)


def normalize_request_path(path: str) -> str:
    """Percent-decode a request path and map directories to their index.html.

    Raises ClientError for ``..`` segments, NUL bytes and backslashes."""
    decoded = unquote(path, errors="strict")
    if not decoded.startswith("/"):
        decoded = "/" + decoded
    segments = decoded.split("/")
    if any(seg == ".." for seg in segments) or "\x00" in decoded or "\\" in decoded:
        raise ClientError(f"refused path {path!r}")
    if decoded.endswith("/"):
        decoded += "index.html"
    return decoded


class StaticSite:
    """An immutable path -> file table, looked up per request."""

    def __init__(self, files: list[StaticFile], *, origin: str) -> None:
        self._files = {f.path: f for f in files}
        self.origin = origin

    def __repr__(self) -> str:
        return f"<StaticSite {self.origin} files={len(self._files)} bytes={self.total_bytes()}>"

    def __contains__(self, path: str) -> bool:
        return path in self._files

    def paths(self) -> list[str]:
        return sorted(self._files)

    def total_bytes(self) -> int:
        return sum(len(f.body) for f in self._files.values())

    def statistics(self) -> dict[str, object]:
        return {"origin": self.origin, "files": len(self._files), "bytes": self.total_bytes()}

    def lookup(self, request_path: str) -> StaticFile:
        try:
            path = normalize_request_path(request_path)
        except UnicodeDecodeError:
            raise ClientError(f"path is not UTF-8: {request_path!r}") from None
        file = self._files.get(path)
        if file is None:
            raise RouteNotFound(f"no file at {path}")
        return file

    @classmethod
    def builtin(cls) -> StaticSite:
        return cls(
            [
                StaticFile.build(f"/{name}", body, BUILTIN_MTIME)
                for name, body in generate_builtin_assets().items()
            ],
            origin="builtin",
        )

    @classmethod
    def from_directory(cls, root: str | os.PathLike[str]) -> StaticSite:
        """Read every regular file under ``root`` (symlinks not followed) into memory."""
        base = Path(root).resolve()
        if not base.is_dir():
            raise FileNotFoundError(f"--root {root}: not a directory")
        files = []
        for dirpath, _dirnames, filenames in os.walk(base):
            for filename in filenames:
                full = Path(dirpath, filename)
                if full.is_symlink() or not full.is_file():
                    continue
                rel = "/" + full.relative_to(base).as_posix()
                files.append(StaticFile.build(rel, full.read_bytes(), int(full.stat().st_mtime)))
        return cls(files, origin=str(base))


# -- generators ---------------------------------------------------------------------------------
def generate_builtin_assets() -> dict[str, bytes]:
    return {
        "style.css": render_style_css(),
        "image.png": render_png(),
        "large.pdf": render_pdf(),
        "test.pdf": render_pdf(ORIGINAL_PDF_SIZE),
        **read_packaged_assets(),
    }


def read_packaged_assets(directory: Path = PACKAGED_DIR) -> dict[str, bytes]:
    """``index.html``, ``test.css``, ``test.jpg``: the files shipped in ``backends/static/``."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def render_style_css() -> bytes:
    return b"""body {
  font-family: sans-serif;
  margin: 2em auto;
  max-width: 40em;
  color: #222;
  background: #fafafa;
}
h1 { color: #246; }
img { border: 1px solid #ccc; }
"""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def render_png(width: int = 136, height: int = 102, noise_bits: int = 3) -> bytes:
    """An RGB gradient plus ``noise_bits`` of deterministic noise per sample (~40 KB)."""
    noise = hashlib.shake_256(b"gateway-demo-image").digest(width * height * 3)
    mask = (1 << noise_bits) - 1
    rows = bytearray()
    i = 0
    for y in range(height):
        rows.append(0)  # filter type None
        for x in range(width):
            rows.append(((x * 255) // width) ^ (noise[i] & mask))
            rows.append(((y * 255) // height) ^ (noise[i + 1] & mask))
            rows.append((((x + y) * 255) // (width + height)) ^ (noise[i + 2] & mask))
            i += 3
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + _png_chunk(b"IEND", b"")
    )


def _pdf_page_text(page: int, lines: int) -> bytes:
    out = [b"BT /F1 9 Tf 40 800 Td 11 TL"]
    for line in range(lines):
        digest = hashlib.sha256(f"{page}:{line}".encode()).hexdigest()
        out.append(f"(Page {page + 1} line {line + 1:02d}: {digest}) '".encode())
    out.append(b"ET")
    return b"\n".join(out) + b"\n"


def _build_pdf(pages: int, lines: int, padding: int) -> bytes:
    # Object numbers: 1 catalog, 2 pages, 3 font, then (page, content) pairs.
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # pages tree, filled in below
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Courier >>",
    ]
    kids = []
    for page in range(pages):
        page_num, content_num = 4 + 2 * page, 5 + 2 * page
        kids.append(f"{page_num} 0 R".encode())
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents "
            + f"{content_num} 0 R".encode()
            + b" >>"
        )
        stream = _pdf_page_text(page, lines)
        if page == pages - 1 and padding > 0:
            # Comment lines are legal in content streams (ISO 32000-1 7.2.3) and render nothing.
            full, rest = divmod(padding, 64)
            stream += (b"%" + b"-" * 62 + b"\n") * full
            if rest:
                stream += b"%" + b"-" * (rest - 2) + b"\n" if rest >= 2 else b"\n"
        objects.append(f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"endstream")
    objects[1] = b"<< /Type /Pages /Kids [" + b" ".join(kids) + f"] /Count {pages} >>".encode()
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref_at = len(out)
    out += f"xref\n0 {len(objects) + 1}\n".encode()
    out += b"0000000000 65535 f \n"
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n".encode()
    out += f"startxref\n{xref_at}\n%%EOF\n".encode()
    return bytes(out)


def render_pdf(size: int = PDF_SIZE, pages: int = 40, lines: int = 64) -> bytes:
    """A valid PDF of exactly ``size`` bytes (when ``size`` exceeds the unpadded document)."""
    padding = 0
    for _ in range(4):  # the stream /Length and xref offsets grow by a digit at most once
        pdf = _build_pdf(pages, lines, padding)
        if len(pdf) == size:
            return pdf
        padding += size - len(pdf)
        if padding < 0:
            return _build_pdf(pages, lines, 0)
    return pdf


def write_builtin_assets(directory: str | os.PathLike[str]) -> list[Path]:
    """Write the built-in set to ``directory`` (for serving it with another server, e.g. Caddy)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, body in generate_builtin_assets().items():
        path = target / name
        path.write_bytes(body)
        os.utime(path, (BUILTIN_MTIME, BUILTIN_MTIME))
        written.append(path)
    return written


if __name__ == "__main__":
    import sys

    for written_path in write_builtin_assets(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(written_path, written_path.stat().st_size)
