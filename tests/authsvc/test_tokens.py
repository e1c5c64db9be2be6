from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest

from authsvc.claims import Claims
from authsvc.token_errors import (
    BadSignature,
    MalformedToken,
    TokenExpired,
    TokenNotYetValid,
    UnknownKey,
    UnsupportedAlgorithm,
)
from authsvc.tokens import (
    MAX_TOKEN_BYTES,
    KeyRing,
    extract_token,
    issue_token,
    verify_token,
)
from httpio.errors import ClientError
from topology.schema import AuthKey, derive_kid

NOW = 1_700_000_000.0
# PyJWT warns (an error under filterwarnings=error) about HMAC keys under 32 bytes.
SECRET = "s" * 32
RING = KeyRing.from_config(SECRET)


def b64(obj: object) -> str:
    raw = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def issue(ring: KeyRing = RING, **kw: Any) -> str:
    token, _ = issue_token(ring, sub="alice", role="user", now=NOW, ttl_s=3600, **kw)
    return token


def test_round_trip() -> None:
    token, claims = issue_token(RING, sub="alice", role="admin", now=NOW, ttl_s=60)
    got = verify_token(RING, token, now=NOW + 59)
    assert got == claims
    assert got == Claims(sub="alice", role="admin", iat=int(NOW), exp=int(NOW) + 60, jti=got.jti)
    assert len(got.jti) >= 20


def test_jti_is_unique() -> None:
    assert verify_token(RING, issue(), now=NOW).jti != verify_token(RING, issue(), now=NOW).jti


def test_pyjwt_decodes_our_token() -> None:
    token = issue(issuer="authsvc")
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert decoded["sub"] == "alice" and decoded["role"] == "user" and decoded["iss"] == "authsvc"
    assert jwt.get_unverified_header(token) == {
        "alg": "HS256",
        "typ": "JWT",
        "kid": derive_kid(SECRET),
    }


def test_we_decode_pyjwt_token() -> None:
    claims = {"sub": "bob", "role": "user", "iat": int(NOW), "exp": int(NOW) + 10, "jti": "j1"}
    token = jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": RING.signing_kid})
    assert verify_token(RING, token, now=NOW).sub == "bob"


def test_expired_by_clock() -> None:
    token = issue()
    verify_token(RING, token, now=NOW + 3599)
    with pytest.raises(TokenExpired):
        verify_token(RING, token, now=NOW + 3600)
    verify_token(RING, token, now=NOW + 3605, leeway_s=10)


def test_nbf_in_future_refused() -> None:
    claims = {
        "sub": "b",
        "role": "r",
        "iat": 0,
        "exp": int(NOW) + 100,
        "jti": "j",
        "nbf": int(NOW) + 50,
    }
    token = jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": RING.signing_kid})
    with pytest.raises(TokenNotYetValid):
        verify_token(RING, token, now=NOW)
    assert verify_token(RING, token, now=NOW + 50).nbf == int(NOW) + 50


def test_tampered_payload_refused() -> None:
    header, _, signature = issue().split(".")
    forged = b64({"sub": "alice", "role": "admin", "iat": 0, "exp": 2**40, "jti": "x"})
    with pytest.raises(BadSignature):
        verify_token(RING, f"{header}.{forged}.{signature}", now=NOW)


def test_tampered_signature_refused() -> None:
    header, payload, signature = issue().split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    with pytest.raises(BadSignature):
        verify_token(RING, f"{header}.{payload}.{flipped}", now=NOW)


def test_other_secret_refused() -> None:
    other = KeyRing([AuthKey(RING.signing_kid, "t" * 32)])
    with pytest.raises(BadSignature):
        verify_token(RING, issue(other), now=NOW)


def test_alg_none_refused() -> None:
    _, payload, _ = issue().split(".")
    for alg in ("none", "None", "NONE"):
        header = b64({"alg": alg, "typ": "JWT", "kid": RING.signing_kid})
        for token in (f"{header}.{payload}.", f"{header}.{payload}"):
            with pytest.raises((UnsupportedAlgorithm, MalformedToken)):
                verify_token(RING, token, now=NOW)
    with pytest.raises(UnsupportedAlgorithm):
        verify_token(RING, f"{b64({'alg': 'none', 'kid': RING.signing_kid})}.{payload}.", now=NOW)


@pytest.mark.parametrize("alg", ["HS512", "HS384", "RS256", "ES256", "hs256"])
def test_other_algorithms_refused(alg: str) -> None:
    _, payload, signature = issue().split(".")
    header = b64({"alg": alg, "typ": "JWT", "kid": RING.signing_kid})
    with pytest.raises(UnsupportedAlgorithm):
        verify_token(RING, f"{header}.{payload}.{signature}", now=NOW)


def test_pyjwt_hs512_with_our_key_refused() -> None:
    claims = {"sub": "b", "role": "r", "iat": 0, "exp": 2**40, "jti": "j"}
    token = jwt.encode(claims, SECRET * 2, algorithm="HS512", headers={"kid": RING.signing_kid})
    with pytest.raises(UnsupportedAlgorithm):
        verify_token(KeyRing.from_config(SECRET * 2), token, now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.###.$$$",
        "eyJhbGciOiJIUzI1NiJ9",
        f"{b64(b'not json')}.{b64({})}.AAAA",
        f"{b64([1, 2])}.{b64({})}.AAAA",
        f"{b64({'typ': 'JWT'})}.{b64({})}.AAAA",
        "é.é.é",
        "a" * (MAX_TOKEN_BYTES + 1),
    ],
)
def test_malformed(token: str) -> None:
    with pytest.raises(MalformedToken):
        verify_token(RING, token, now=NOW)


def test_signed_but_unreadable_claims_is_malformed() -> None:
    token = jwt.encode({"sub": 1}, SECRET, algorithm="HS256", headers={"kid": RING.signing_kid})
    with pytest.raises(MalformedToken):
        verify_token(RING, token, now=NOW)


def test_missing_or_unknown_kid_refused() -> None:
    token = jwt.encode(
        {"sub": "b", "role": "r", "iat": 0, "exp": 2**40, "jti": "j"}, SECRET, algorithm="HS256"
    )
    with pytest.raises(UnknownKey):
        verify_token(RING, token, now=NOW)
    token = jwt.encode(
        {"sub": "b", "role": "r", "iat": 0, "exp": 2**40, "jti": "j"},
        SECRET,
        algorithm="HS256",
        headers={"kid": "k-elsewhere"},
    )
    with pytest.raises(UnknownKey):
        verify_token(RING, token, now=NOW)


def test_rotation_newest_signs_all_listed_verify() -> None:
    old = KeyRing.from_config("legacy-" * 5)
    legacy_kid = derive_kid("legacy-" * 5)
    old_token = issue(old)

    rotated = KeyRing.from_config("legacy-" * 5, [AuthKey("k2", "new-secret-" * 3)])
    assert rotated.signing_kid == "k2"
    assert verify_token(rotated, old_token, now=NOW).sub == "alice"
    new_token = issue(rotated)
    assert jwt.get_unverified_header(new_token)["kid"] == "k2"

    # Old processes that do not know k2 yet refuse the new token rather than guessing.
    with pytest.raises(UnknownKey):
        verify_token(old, new_token, now=NOW)

    retired = KeyRing.from_config("", [AuthKey("k2", "new-secret-" * 3)])
    with pytest.raises(UnknownKey):
        verify_token(retired, old_token, now=NOW)
    assert verify_token(retired, new_token, now=NOW).sub == "alice"
    assert legacy_kid in repr(rotated) and "secret" not in repr(rotated)


def test_ring_refuses_bad_config() -> None:
    with pytest.raises(ValueError):
        KeyRing.from_config("")
    with pytest.raises(ValueError):
        KeyRing([AuthKey("a", "x"), AuthKey("a", "y")])
    with pytest.raises(ValueError):
        KeyRing([AuthKey("", "x")])


def test_derive_kid_is_stable() -> None:
    assert derive_kid("private_key") == derive_kid("private_key")
    assert derive_kid("private_key").startswith("k-") and len(derive_kid("x")) == 10


# -- weak keys, the client-address proof --------------------------------------------------------
def test_published_and_short_keys_are_named_not_refused() -> None:
    ring = KeyRing.from_config("private_key", [AuthKey("k2", "short"), AuthKey("k3", "z" * 32)])
    problems = ring.weaknesses()
    assert len(problems) == 2
    assert derive_kid("private_key") in problems[0] and "published" in problems[0]
    assert "'k2' is 5 bytes" in problems[1]
    assert KeyRing([AuthKey("k", "your-secret-key")]).weaknesses()[0].count("published") == 1
    assert KeyRing([AuthKey("k", "\u00e9" * 16)]).weaknesses() == []  # 32 bytes of UTF-8
    assert KeyRing([AuthKey("k", "z" * 31)]).weaknesses() != []
    # Weak keys still work: the original's files load and run, loudly.
    token = issue(ring)
    assert verify_token(ring, token, now=NOW).sub == "alice"


def test_no_key_at_all_says_where_one_comes_from() -> None:
    with pytest.raises(ValueError, match="fleet"):
        KeyRing.from_config("", [])


def test_client_proof_is_ours_alone() -> None:
    ring = KeyRing.from_config("a" * 32, [AuthKey("k2", "b" * 32)])
    proof = ring.client_proof("203.0.113.7")
    assert proof.startswith(b"203.0.113.7;")
    assert ring.vouched_client(proof) == "203.0.113.7"
    older = KeyRing.from_config("a" * 32)
    assert ring.vouched_client(older.client_proof("::1")) == "::1"  # any key of the ring
    other = KeyRing.from_config("c" * 32)
    for forged in (
        other.client_proof("203.0.113.7"),
        proof.replace(b"203.0.113.7", b"203.0.113.8"),
        b"203.0.113.7",
        b";" + proof.split(b";")[1],
        b"",
        None,
    ):
        assert ring.vouched_client(forged) is None


def challenge(err: Exception) -> bytes:
    assert isinstance(err, ClientError)
    return dict(err.headers)[b"www-authenticate"]


# -- extraction -------------------------------------------------------------------------------
def test_extract_bearer() -> None:
    assert extract_token([(b"authorization", b"Bearer abc.def.ghi")]) == "abc.def.ghi"
    assert extract_token([(b"authorization", b"bearer   abc")]) == "abc"


def test_extract_authtoken_raw_and_json() -> None:
    assert extract_token([(b"authtoken", b"abc.def.ghi")]) == "abc.def.ghi"
    signin_body = b'{"token":"abc.def.ghi","token_type":"Bearer","expires_in":3600,"username":"a"}'
    assert extract_token([(b"authtoken", signin_body)]) == "abc.def.ghi"
    assert extract_token([(b"authtoken", b'  {"token": "t1"}  ')]) == "t1"


def test_extract_missing() -> None:
    assert extract_token([]) is None
    assert extract_token([(b"host", b"x")]) is None
    assert extract_token([(b"authorization", b"Basic YWxhZGRpbjpvcGVuc2VzYW1l")]) is None


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authtoken", b'{"username": "a"}')],
        [(b"authtoken", b'{"token": 5}')],
        [(b"authtoken", b"{not json")],
        [(b"authorization", b"Bearer ")],
        [(b"authorization", b"Bearer a b")],
        [(b"authtoken", "tökén".encode())],
        [(b"authorization", b"Bearer one"), (b"authtoken", b"two")],
    ],
)
def test_extract_unreadable_is_400(headers: Any) -> None:
    with pytest.raises(ClientError) as info:
        extract_token(headers)
    assert info.value.status == 400
    assert b'error="invalid_request"' in challenge(info.value)


def test_same_token_twice_is_fine() -> None:
    assert extract_token([(b"authorization", b"Bearer t"), (b"authtoken", b"t")]) == "t"


def test_other_claims_are_kept_bounded_for_rate_limit_keys() -> None:
    from authsvc.tokens import MAX_EXTRA_CLAIMS, claim_of, extra_claims

    ring = KeyRing.from_config("k" * 40)
    token, issued = issue_token(
        ring, sub="alice", role="user", now=NOW, ttl_s=60, extra=[("tenant", "acme")]
    )
    got = verify_token(ring, token, now=NOW)
    assert got.extra == (("tenant", "acme"),) == issued.extra
    assert claim_of(got, "tenant") == "acme" and claim_of(got, "plan") is None
    assert claim_of(got, "sub") == "alice" and claim_of(got, "iss") is None
    plain, _ = issue_token(ring, sub="bob", role="user", now=NOW, ttl_s=60)
    assert verify_token(ring, plain, now=NOW).extra == ()
    payload = {
        "sub": "x",
        "flag": True,
        "n": 3,
        "nested": {"a": 1},
        "list": [1],
        "long": "v" * 300,
        "n" * 65: "name too long",
        **{f"c{i}": "v" for i in range(40)},
    }
    extra = dict(extra_claims(payload))
    assert extra["flag"] == "true" and extra["n"] == "3"
    assert not {"sub", "nested", "list", "long", "n" * 65} & extra.keys()
    assert len(extra) == MAX_EXTRA_CLAIMS
    with pytest.raises(ValueError):
        issue_token(ring, sub="a", role="user", now=NOW, ttl_s=60, extra=[("role", "admin")])
