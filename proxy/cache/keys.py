"""Cache keys: one readable string per (namespace, region, service, authority, target).

Pure functions; no I/O. RFC 9111 2: the primary cache key is the request method and the
target URI, and the URI's authority belongs to it. So the key carries the ``Host`` the client
asked for (lowercased, default port dropped: RFC 9110 4.2.3), and, when a hop of ours
forwarded the request, the ``X-Forwarded-*``/``Forwarded`` values it carried, because the
origin sees those as the client's authority (`authority_of`):

    gw:v2:ko_KR:image://localhost:9000/thumbs/a.png?s=1
    gw:v2:en_US:sound://127.0.0.1:9001;f=<32 hex>/a.mp3      (forwarded by a hop)

Readable, so that an operator can purge by prefix (``gw:v2:ko_KR:image:`` is the whole
service, ``gw:v2:ko_KR:image://localhost:9000/thumbs/`` one directory), and unambiguous: no
two distinct tuples share a key. Why that holds, field by field:

- the namespace is validated (`NAMESPACE_PATTERN`: ``:``-separated words of letters, digits
  and ``_.-``, each starting with a letter); region and service are percent-encoded with
  nothing safe, so they hold no ``:``, ``/`` or ``|``. The fourth ``:`` ends them, and the
  ``//`` after it cannot be read as the start of a region or of a namespace word, so keys of
  two namespaces never meet either;
- the authority is a validated host (`HOST_PATTERN`: letters, digits, ``._~-``, or an IPv6
  literal; at most `MAX_HOST_CHARS`), an optional port and an optional ``;f=<hex>``; it has
  no ``/``, and the target always starts with one, so the first ``/`` ends it. A Host outside
  that grammar is not keyed at all: the request bypasses the cache (`policy`);
- in the target every ``|`` is doubled, so runs of ``|`` inside it are even. A single ``|``
  starts a suffix: ``|v=<generation>:<digest>`` for a Vary variant, ``|#=<sha256>`` for a
  target cut short. No target can spell a suffix, and a key's suffixes are found by prefix
  (`is_key_or_variant`, ``SCAN MATCH <key>|v=*``).

The default namespace is ``gw:v2``: under ``gw:v1`` keys had no authority, and an old
entry for the target ``//localhost:9000/a`` would read as the new key of ``/a`` at
``localhost:9000``; a new version keeps a rolling upgrade (old and new proxies on one
Redis) and the entries left from before apart, and ``gw:v1`` ones expire on their own.

A key longer than `MAX_KEY_CHARS` keeps its readable head and the first characters of the
target (never cutting a ``||`` in two, so its runs stay even) and ends with
``|#=`` and the sha256 of the whole canonical key. The old form, ``key[:200] + "#" + sha256``,
collided with a short key whose target ended in ``#<that digest>`` (``#`` is legal there);
a ``|#=`` suffix is a single ``|`` and no target produces one.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from urllib.parse import quote

MAX_KEY_CHARS = 512
MAX_HOST_CHARS = 255
VARIANT_MARK = "|v="
DIGEST_MARK = "|#="
FORWARDED_MARK = ";f="
_DIGEST_CHARS = len(DIGEST_MARK) + 64

# RFC 3986 3.2.2, narrowed to what real clients send: DNS names, IPv4, IPv6 literals. The
# sub-delims a reg-name may hold (";", "=", "," ...) are left out so that FORWARDED_MARK
# and the key's own punctuation can never appear inside a host.
HOST_PATTERN = re.compile(r"([a-z0-9._~\-]+|\[[0-9a-f:.]+\])(?::([0-9]{0,5}))?")
DEFAULT_PORT = "80"  # the proxy listens for http only; https ends before it


@lru_cache(maxsize=256)
def _field(text: str) -> str:
    return quote(text, safe="")


def normalise_host(raw: bytes) -> str | None:
    """``Host`` as the key holds it (lowercase, no default port), or None when it is not a
    host a client would send (the request is then not cached)."""
    cached = _hosts.get(raw)
    if cached is not None:
        return cached or None
    text = raw.decode("latin-1").strip().lower()
    found = HOST_PATTERN.fullmatch(text) if len(text) <= MAX_HOST_CHARS + 6 else None
    host = ""
    if found is not None and len(found.group(1)) <= MAX_HOST_CHARS:
        name, port = found.group(1), found.group(2)
        if not port or port.lstrip("0") == DEFAULT_PORT:
            host = name
        elif int(port) <= 65535:
            host = f"{name}:{int(port)}"
    if len(_hosts) >= _HOSTS_REMEMBERED:
        _hosts.clear()
    _hosts[raw] = host
    return host or None


# Host values repeat on almost every request; normalising each costs a regex. A small map,
# emptied when full, keeps the hit path cheap without growing with a client's inventions.
_HOSTS_REMEMBERED = 1024
_hosts: dict[bytes, str] = {}


def forwarded_digest(fields: list[tuple[bytes, bytes]]) -> str:
    """A digest (128 bits) of the forwarded-authority fields a request carries, in order; each
    name and value is length-prefixed so that no two lists hash the same input."""
    h = hashlib.sha256()
    for name, value in fields:
        h.update(b"%d:%s%d:%s" % (len(name), name, len(value), value))
    return h.hexdigest()[:32]


def authority_of(host: str, forwarded: list[tuple[bytes, bytes]] | None) -> str:
    if not forwarded:
        return host
    return host + FORWARDED_MARK + forwarded_digest(forwarded)


def service_prefix(namespace: str, region: str, service: str) -> str:
    """The readable head every key of one service starts with (a purge prefix)."""
    return f"{namespace}:{_field(region)}:{_field(service)}:"


def cache_key(namespace: str, region: str, service: str, authority: str, target: str) -> str:
    """The primary key of ``target`` (origin-form, starting with ``/``) at ``authority``."""
    head = f"{namespace}:{_field(region)}:{_field(service)}://{authority}"
    body = target.replace("|", "||") if "|" in target else target
    if len(head) + len(body) <= MAX_KEY_CHARS:
        return head + body
    canonical = (head + body).encode("utf-8", "surrogateescape")
    digest = hashlib.sha256(canonical).hexdigest()
    cut = body[: max(0, MAX_KEY_CHARS - len(head) - _DIGEST_CHARS)]
    if (len(cut) - len(cut.rstrip("|"))) % 2:
        cut = cut[:-1]  # the cut went through a doubled "|": keep runs even
    return f"{head}{cut}{DIGEST_MARK}{digest}"


def variant_key(base: str, generation: str, parts: list[tuple[bytes, bytes]]) -> str:
    """The key of one Vary variant: ``parts`` are (header name, the request's joined value)
    in the index's order; each is length-prefixed before hashing, so no two lists share a
    digest."""
    h = hashlib.sha256()
    for name, value in parts:
        h.update(b"%d:%s%d:%s" % (len(name), name, len(value), value))
    return f"{base}{VARIANT_MARK}{generation}:{h.hexdigest()[:32]}"


def is_key_or_variant(candidate: str, key: str) -> bool:
    """``candidate`` is ``key`` itself or one of its Vary variants. Exact: a target's own
    ``|`` are doubled, so no other key starts with ``key + "|v="``."""
    return candidate == key or candidate.startswith(key + VARIANT_MARK)
