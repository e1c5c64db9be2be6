"""`authsvc.passwords`: argon2id by default at OWASP's minimum, scrypt on request, and every
hash an earlier version stored still verifying, then moved to the configured policy at the
next successful sign-in. The hashes here are made independently (hashlib, argon2-cffi's own
hasher) so that the format, not just our round trip, is what is checked."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import argon2
import pytest

from authsvc.app import load_auth_config
from authsvc.passwords import (
    MalformedHash,
    configured_params,
    hash_password,
    make_dummy_hash,
    needs_rehash,
    stored_params,
    verify_password,
)
from tests.authsvc.conftest import SECRET, Server, serve
from topology.load import ConfigError, load_config
from topology.schema import Argon2Params, GatewayConfig, ScryptParams

CHEAP = Argon2Params(memory_kib=64, time_cost=1)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def old_default_hash(password: str, salt: bytes = b"0123456789abcdef") -> str:
    """A hash as the auth server made them before argon2id: scrypt N=2**14, r=8, p=1."""
    digest = hashlib.scrypt(password.encode(), salt=salt, n=1 << 14, r=8, p=1, dklen=32)
    return f"$scrypt$ln=14,r=8,p=1${b64(salt)}${b64(digest)}"


# -- the defaults ------------------------------------------------------------------------------


def test_the_default_is_argon2id_at_owasps_minimum() -> None:
    params = configured_params(GatewayConfig())
    assert isinstance(params, Argon2Params)
    assert (params.memory_kib, params.time_cost, params.parallelism) == (19456, 2, 1)
    stored = hash_password("stirfry", params)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password("stirfry", stored) and not verify_password("stirfry!", stored)


def test_scrypt_when_asked_for_is_at_owasps_minimum_too() -> None:
    params = configured_params(GatewayConfig(password_hash="scrypt"))
    assert params == ScryptParams(n=1 << 17, r=8, p=1)


def test_the_proxys_config_schema_takes_the_same_fields(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    fields = {"Password_hash": "scrypt", "Argon2id": {"memory_kib": 65536, "time_cost": 3}}
    path.write_text(json.dumps(fields))
    config = load_config(path)
    assert config.password_hash == "scrypt" and config.argon2id.memory_kib == 65536


def test_config_picks_the_algorithm_and_refuses_unknown_ones(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    key = {"Auth_key": SECRET}
    path.write_text(json.dumps({**key, "Password_hash": "scrypt", "Scrypt": {"n": 1024}}))
    assert configured_params(load_auth_config(path)) == ScryptParams(n=1024)
    path.write_text(json.dumps({**key, "Argon2id": {"memory_kib": 47104, "time_cost": 1}}))
    assert configured_params(load_auth_config(path)) == Argon2Params(memory_kib=47104, time_cost=1)
    for bad in ({"Password_hash": "bcrypt"}, {"Argon2id": {"memory_kib": 1 << 21}}):
        path.write_text(json.dumps({**key, **bad}))
        with pytest.raises(ConfigError, match=r"config\.json"):
            load_auth_config(path)


# -- old and foreign hashes --------------------------------------------------------------------


def test_a_hash_of_the_old_default_verifies_and_asks_to_be_replaced() -> None:
    stored = old_default_hash("guccigang")
    assert verify_password("guccigang", stored)
    assert not verify_password("guccigan", stored)
    assert stored_params(stored) == (ScryptParams(n=1 << 14), 16)
    assert needs_rehash(stored, configured_params(GatewayConfig()))
    assert needs_rehash(stored, ScryptParams())  # scrypt, but cheaper than now


def test_argon2_cffis_own_hashes_verify_with_their_own_parameters() -> None:
    stored = argon2.PasswordHasher(time_cost=1, memory_cost=128, parallelism=2).hash("curry")
    assert verify_password("curry", stored) and not verify_password("Carey", stored)
    assert stored_params(stored) == (Argon2Params(memory_kib=128, time_cost=1, parallelism=2), 16)
    assert needs_rehash(stored, CHEAP)
    assert not needs_rehash(hash_password("curry", CHEAP), CHEAP)
    assert needs_rehash(hash_password("curry", CHEAP), ScryptParams(n=16))


@pytest.mark.parametrize(
    "stored",
    [
        "$argon2id$v=19$m=64,t=1,p=1$!!!$AAAA",
        "$argon2id$v=19$m=64,t=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        # argon2i and argon2d are not what we make; refused rather than trusted
        "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        # a tampered row asking for 2 GiB is refused before any work
        "$argon2id$v=19$m=2097152,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_malformed_argon2_hashes(stored: str) -> None:
    with pytest.raises(MalformedHash):
        verify_password("x", stored)


def test_the_dummy_hash_costs_one_argon2_to_check_and_none_to_make(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dummy = make_dummy_hash(configured_params(GatewayConfig()))
    assert stored_params(dummy) == (configured_params(GatewayConfig()), 16)
    calls: list[str] = []
    real = argon2.PasswordHasher.verify

    def counting(self: argon2.PasswordHasher, stored: str, password: Any) -> bool:
        calls.append(stored)
        return real(self, stored, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", counting)
    cheap = make_dummy_hash(CHEAP)
    assert not verify_password("anything", cheap)
    assert calls == [cheap]
    assert make_dummy_hash(CHEAP) != cheap


# -- through the auth server -------------------------------------------------------------------


async def test_signin_moves_an_old_scrypt_user_to_argon2id(
    server: Server, nursery: Any, tmp_path: Path, clock: Any, pool: Any
) -> None:
    """A user database from before (scrypt N=2**14) under the new default: the password still
    works, and the first successful sign-in stores an argon2id hash in its place."""
    server.app.store.create_user("lilpump", old_default_hash("guccigang"), "user")
    settings = GatewayConfig(auth_key=SECRET, argon2id=CHEAP)
    upgraded = await serve(nursery, tmp_path / "auth.db", clock, pool, settings)
    body = {"username": "lilpump", "password": "guccigang"}
    wrong = await upgraded.call("POST", "/signin", {**body, "password": "Carey"})
    assert wrong[0] == 401
    user = upgraded.app.store.get_user("lilpump")
    assert user is not None and user.password_hash.startswith("$scrypt$ln=14,")  # kept
    status, _, answer = await upgraded.call("POST", "/signin", body)
    assert status == 200 and answer["username"] == "lilpump"
    user = upgraded.app.store.get_user("lilpump")
    assert user is not None and user.password_hash.startswith("$argon2id$v=19$m=64,t=1,p=1$")
    assert verify_password("guccigang", user.password_hash)
    assert (await upgraded.call("POST", "/signin", body))[0] == 200
    upgraded.app.store.close()
