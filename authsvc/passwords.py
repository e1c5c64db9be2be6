"""Password hashing: scrypt (RFC 7914) from the standard library, parameters stored per hash.

The original kept bcrypt hashes in PostgreSQL. We use ``hashlib.scrypt`` so the auth server
needs no compiled dependency beyond OpenSSL, with a fresh 16-byte random salt per user.

Every stored hash carries the parameters it was made with, in the PHC string format
(``$scrypt$ln=14,r=8,p=1$<salt>$<hash>``, unpadded base64), so the configured cost can be
raised later: old hashes keep verifying with their own parameters and ``needs_rehash`` tells
the caller to replace them at the next successful sign-in.

Defaults are those of the scrypt paper for interactive logins: N=2**14, r=8, p=1, which needs
128*r*N = 16 MiB and measured ~24 ms per verify on the development machine (2 cores).
The comparison is ``hmac.compare_digest`` so a wrong password leaks no prefix length.

Pure and blocking: callers on an event loop run these in a worker thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from topology.schema import SCRYPT_MAX_LOG2_N, ScryptParams

_SALT_BYTES = 16


class MalformedHash(ValueError):
    """A stored hash is not one this module wrote: the database row is to blame."""


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _derive(password: str, salt: bytes, params: ScryptParams) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=params.maxmem,
        dklen=params.dklen,
    )


def hash_password(password: str, params: ScryptParams, *, salt: bytes | None = None) -> str:
    """Return the PHC-format string to store for ``password``."""
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    return _phc(params, salt, _derive(password, salt, params))


def _phc(params: ScryptParams, salt: bytes, digest: bytes) -> str:
    log2_n = params.n.bit_length() - 1
    return f"$scrypt$ln={log2_n},r={params.r},p={params.p}${_b64encode(salt)}${_b64encode(digest)}"


def parse_hash(stored: str) -> tuple[ScryptParams, bytes, bytes]:
    """Split a stored hash into (params, salt, digest); raise MalformedHash otherwise."""
    try:
        empty, scheme, param_text, salt_text, digest_text = stored.split("$")
        if empty or scheme != "scrypt":
            raise ValueError("not an scrypt PHC string")
        fields = dict(item.split("=", 1) for item in param_text.split(","))
        if set(fields) != {"ln", "r", "p"}:
            raise ValueError("expected ln, r and p")
        log2_n = int(fields["ln"])
        if not 1 <= log2_n <= SCRYPT_MAX_LOG2_N:
            raise ValueError("ln out of range")
        salt = _b64decode(salt_text)
        digest = _b64decode(digest_text)
        params = ScryptParams(
            n=1 << log2_n, r=int(fields["r"]), p=int(fields["p"]), dklen=len(digest)
        )
    except (ValueError, TypeError) as exc:
        raise MalformedHash(f"unreadable password hash: {exc}") from None
    return params, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; costs one scrypt with the stored params."""
    params, salt, digest = parse_hash(stored)
    return hmac.compare_digest(_derive(password, salt, params), digest)


def needs_rehash(stored: str, params: ScryptParams) -> bool:
    """True when ``stored`` was made with other parameters than the configured ones."""
    stored_params, salt, _ = parse_hash(stored)
    return stored_params != params or len(salt) != _SALT_BYTES


def make_dummy_hash(params: ScryptParams) -> str:
    """A stored hash that no password matches, verified against when a username does not exist
    so that "no such user" and "wrong password" cost the same scrypt and cannot be told apart
    by time. Random salt and digest rather than a real hash: verifying costs the full scrypt
    all the same, and making it costs none, so an auth server does no scrypt before it listens
    (with ``Scrypt: {n: 2**20}`` one hash takes seconds)."""
    return _phc(params, os.urandom(_SALT_BYTES), os.urandom(params.dklen))
