from __future__ import annotations

import hashlib
from typing import Any

import pytest

from authsvc.passwords import (
    MalformedHash,
    hash_password,
    make_dummy_hash,
    needs_rehash,
    parse_hash,
    verify_password,
)
from topology.schema import ScryptParams

# Cheap parameters keep the suite fast; the defaults are exercised once below.
FAST = ScryptParams(n=1 << 4, r=8, p=1)


def test_hash_then_verify() -> None:
    stored = hash_password("guccigang", FAST)
    assert verify_password("guccigang", stored)
    assert not verify_password("guccigang ", stored)
    assert not verify_password("", stored)


def test_default_params_round_trip() -> None:
    stored = hash_password("stirfry", ScryptParams())
    assert stored.startswith("$scrypt$ln=17,r=8,p=1$")  # OWASP's minimum
    assert verify_password("stirfry", stored)


def test_salt_is_random_per_hash() -> None:
    assert hash_password("same", FAST) != hash_password("same", FAST)


def test_params_are_stored_with_the_hash() -> None:
    stored = hash_password("curry", ScryptParams(n=1 << 5, r=4, p=2, dklen=48))
    params, salt, digest = parse_hash(stored)
    assert params == ScryptParams(n=32, r=4, p=2, dklen=48)
    assert len(salt) == 16 and len(digest) == 48
    # Still verifies after the configured params change, and asks to be upgraded.
    assert verify_password("curry", stored)
    assert needs_rehash(stored, FAST)
    assert not needs_rehash(hash_password("curry", FAST), FAST)


def test_unicode_passwords() -> None:
    stored = hash_password("pässwörd-🔑", FAST)
    assert verify_password("pässwörd-🔑", stored)
    assert not verify_password("passwörd-🔑", stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plaintext",
        "$bcrypt$ln=4,r=8,p=1$AAAA$AAAA",
        "$scrypt$ln=4,r=8$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "$scrypt$ln=40,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "$scrypt$ln=4,r=8,p=1$!!!$AAAA",
    ],
)
def test_malformed_stored_hash(stored: str) -> None:
    with pytest.raises(MalformedHash):
        verify_password("x", stored)


@pytest.mark.parametrize("kwargs", [{"n": 1000}, {"n": 1}, {"r": 0}, {"p": 0}, {"dklen": 8}])
def test_bad_params_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ScryptParams(**kwargs)


def test_dummy_hash_verifies_nothing_useful() -> None:
    dummy = make_dummy_hash(FAST)
    assert parse_hash(dummy)[0] == FAST
    assert not verify_password("", dummy)


def test_dummy_hash_costs_no_scrypt_to_make_and_a_full_one_to_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An auth server makes one at start, before it listens: that must be free even with a
    costly configured scrypt, while checking against it costs what a real user's check does."""
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(kwargs["n"])
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    costly = ScryptParams(n=2**20)
    dummy = make_dummy_hash(costly)
    assert calls == [] and parse_hash(dummy)[0] == costly
    assert make_dummy_hash(costly) != dummy
    fast = make_dummy_hash(FAST)
    assert not verify_password("anything", fast)
    assert calls == [FAST.n]
