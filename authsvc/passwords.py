"""Password hashing: argon2id (RFC 9106) by default, scrypt (RFC 7914) still read and made.

The original kept bcrypt hashes in PostgreSQL; we started with ``hashlib.scrypt`` at the scrypt
paper's interactive N=2**14, which is below OWASP's Password Storage Cheat Sheet (argon2id
m=19 MiB, t=2, p=1; where argon2id is unavailable, scrypt N=2**17, r=8, p=1, or one of its
listed equivalents such as N=2**14, r=8, p=5). At those equal strengths, measured on the
development machine (2 cores, one hash per core in worker threads, as the auth server runs
them; ``python -m bench.hashes``) argon2id costs ~25 ms a hash and scrypt 160-370 ms, because
OpenSSL computes scrypt's ``p`` lanes one after another and N=2**17 needs 128 MiB. So argon2id
(``argon2-cffi``, which releases the GIL while it hashes) makes every new hash unless
config.json says ``"Password_hash": "scrypt"``; ``Argon2id`` and ``Scrypt`` hold the costs.

Every stored hash is a PHC string carrying its algorithm and parameters
(``$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>``, ``$scrypt$ln=17,r=8,p=1$<salt>$<hash>``,
unpadded base64), so either kind verifies with its own parameters whatever is configured now,
and ``needs_rehash`` tells the caller to replace a hash made with another algorithm or other
costs at the next successful sign-in: the hashes of an existing user database move to the
configured policy one sign-in at a time, without a reset.

The comparison is constant-time (``hmac.compare_digest``; argon2's own check for argon2id),
so a wrong password leaks no prefix length. Pure and blocking: callers on an event loop run
these in a worker thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from topology.schema import SCRYPT_MAX_LOG2_N, Argon2Params, GatewayConfig, ScryptParams

_SALT_BYTES = 16


def _hasher(params: Argon2Params) -> PasswordHasher:
    return PasswordHasher(
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=params.hash_len,
        salt_len=_SALT_BYTES,
        type=Type.ID,
    )


HashParams = Argon2Params | ScryptParams


def configured_params(config: GatewayConfig) -> HashParams:
    """What new hashes are made with: config.json's ``Password_hash`` and its costs."""
    return config.argon2id if config.password_hash == "argon2id" else config.scrypt


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


def hash_password(password: str, params: HashParams, *, salt: bytes | None = None) -> str:
    """Return the PHC-format string to store for ``password``."""
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    if isinstance(params, Argon2Params):
        return _hasher(params).hash(password, salt=salt)
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


def parse_argon2_hash(stored: str) -> tuple[Argon2Params, int]:
    """The parameters of a stored argon2id hash and its salt length; MalformedHash otherwise."""
    try:
        found = extract_parameters(stored)
        if found.type is not Type.ID:
            raise ValueError("not argon2id")
        params = Argon2Params(
            memory_kib=found.memory_cost,
            time_cost=found.time_cost,
            parallelism=found.parallelism,
            hash_len=found.hash_len,
        )
    except (InvalidHashError, ValueError, TypeError) as exc:
        raise MalformedHash(f"unreadable password hash: {exc}") from None
    return params, found.salt_len


def stored_params(stored: str) -> tuple[HashParams, int]:
    """The algorithm's parameters a stored hash was made with, and its salt length."""
    if stored.startswith("$argon2id$"):
        return parse_argon2_hash(stored)
    params, salt, _ = parse_hash(stored)
    return params, len(salt)


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; costs one hash with the stored params."""
    if stored.startswith("$argon2"):
        params, _ = parse_argon2_hash(stored)  # refuses absurd costs before any work
        try:
            return _hasher(params).verify(stored, password)
        except VerifyMismatchError:
            return False
        except (VerificationError, InvalidHashError) as exc:
            raise MalformedHash(f"unreadable password hash: {exc}") from None
    scrypt_params, salt, digest = parse_hash(stored)
    return hmac.compare_digest(_derive(password, salt, scrypt_params), digest)


def needs_rehash(stored: str, params: HashParams) -> bool:
    """True when ``stored`` was made with another algorithm or other parameters than the
    configured ones (an scrypt hash under an argon2id policy, a cheaper N ...)."""
    made_with, salt_len = stored_params(stored)
    return made_with != params or salt_len != _SALT_BYTES


def make_dummy_hash(params: HashParams) -> str:
    """A stored hash that no password matches, verified against when a username does not exist
    so that "no such user" and "wrong password" cost the same hash and cannot be told apart
    by time. Random salt and digest rather than a real hash: verifying costs the full hash
    all the same, and making it costs none, so an auth server does no hashing before it
    listens (with ``Scrypt: {n: 2**20}`` one hash takes seconds)."""
    salt = os.urandom(_SALT_BYTES)
    if isinstance(params, Argon2Params):
        return (
            f"$argon2id$v=19$m={params.memory_kib},t={params.time_cost},p={params.parallelism}"
            f"${_b64encode(salt)}${_b64encode(os.urandom(params.hash_len))}"
        )
    return _phc(params, salt, os.urandom(params.dklen))
