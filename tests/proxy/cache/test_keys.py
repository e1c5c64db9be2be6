"""Cache keys are unambiguous: a decoder written from the module header alone recovers every
field of a key, so no two distinct tuples can share one (hypothesis searches for a pair)."""

from __future__ import annotations

import hashlib
import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cache.keys import (
    MAX_KEY_CHARS,
    authority_of,
    cache_key,
    is_key_or_variant,
    normalise_host,
    service_prefix,
    variant_key,
)
from topology.schema import CacheSettings

NS = "gw:v1"


# -- a decoder: the proof that the encoding is injective --------------------------------------
def decode(key: str) -> tuple[str, str, str, str, str, list[str]]:
    """(namespace, quoted region, quoted service, authority, target, suffixes). For a cut
    key the target is the kept head and the first suffix is ``#=<sha256>``."""
    cut = key.index("://")  # region and service are quoted: the first "://" ends them
    namespace, region, service = key[:cut].rsplit(":", 2)
    rest = key[cut + 3 :]
    slash = rest.index("/")  # hosts have no "/": the first one starts the target
    authority, encoded = rest[:slash], rest[slash:]
    target, i = [], 0
    while i < len(encoded):
        if encoded[i] != "|":
            target.append(encoded[i])
            i += 1
        elif encoded[i : i + 2] == "||":
            target.append("|")
            i += 2
        else:
            break  # a single "|": the suffixes start here
    suffixes = encoded[i + 1 :].split("|") if i < len(encoded) else []
    return namespace, region, service, authority, "".join(target), suffixes


def quoted(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


namespaces = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_.-]{0,6}(:[A-Za-z][A-Za-z0-9_.-]{0,6}){0,2}\Z")
# config-given, but nothing assumed of them: the key's own punctuation is likely
names = st.text(alphabet=st.sampled_from("ab:/%|_"), min_size=1, max_size=5)
hosts = st.one_of(
    st.just(""),
    st.from_regex(r"\A[a-z0-9._~-]{1,20}(:[1-9][0-9]{0,4})?\Z"),
    st.from_regex(r"\A\[[0-9a-f:.]{2,12}\](:[1-9][0-9]{0,3})?\Z"),
)
forwarded = st.lists(
    st.tuples(st.sampled_from([b"x-forwarded-host", b"forwarded"]), st.binary(max_size=20)),
    max_size=2,
)
targets = st.builds(
    lambda body: "/" + body,
    st.text(
        alphabet=st.sampled_from("ab/|#?=:%;v~ é"),
        max_size=700,  # beyond MAX_KEY_CHARS, so cut keys are drawn too
    ),
)
tuples = st.tuples(namespaces, names, names, hosts, forwarded, targets)


def key_of(t: tuple[str, str, str, str, list[tuple[bytes, bytes]], str]) -> str:
    namespace, region, service, host, fwd, target = t
    return cache_key(namespace, region, service, authority_of(host, fwd), target)


@settings(max_examples=400, deadline=None)
@given(tuples)
def test_a_key_decodes_back_to_its_fields(t):
    namespace, region, service, host, fwd, target = t
    key = key_of(t)
    got_ns, got_region, got_service, authority, got_target, suffixes = decode(key)
    assert (got_ns, got_region, got_service) == (namespace, quoted(region), quoted(service))
    assert authority == authority_of(host, fwd)
    if suffixes:  # cut: the head of the target, then the digest of the whole canonical key
        assert len(suffixes) == 1 and suffixes[0].startswith("#=")
        assert target.startswith(got_target) and len(key) <= MAX_KEY_CHARS
        whole = key[: key.index("://") + 3] + authority + target.replace("|", "||")
        assert suffixes[0][2:] == hashlib.sha256(whole.encode()).hexdigest()
    else:
        assert got_target == target


@settings(max_examples=400, deadline=None)
@given(tuples, tuples)
def test_distinct_tuples_never_share_a_key(a, b):
    fields_a = (*a[:3], authority_of(a[3], a[4]), a[5])
    fields_b = (*b[:3], authority_of(b[3], b[4]), b[5])
    assert (key_of(a) == key_of(b)) == (fields_a == fields_b)


@given(tuples, st.text(alphabet="0123456789abcdef", min_size=1, max_size=8))
def test_a_variant_key_is_never_a_base_key_and_belongs_to_its_base_only(t, generation):
    base = key_of(t)
    variant = variant_key(base, generation, [(b"accept", b"x")])
    assert is_key_or_variant(variant, base)
    *_, suffixes = decode(variant)
    assert suffixes[-1].startswith("v=" + generation + ":")
    # no other target can produce it: its base decodes to the same tuple
    assert decode(variant)[:5] == decode(base)[:5]


def test_the_old_cut_key_collision_is_gone():
    """``key[:200] + "#" + sha256(key)`` let a 253-character target be read as another
    user's long URL. A cut key now ends in ``|#=``, which no target can spell."""
    victim = "/search?q=" + "a" * 600
    cut = cache_key(NS, "ko_KR", "image", "h", victim)
    assert len(cut) <= MAX_KEY_CHARS and "|#=" in cut
    head = "gw:v1:ko_KR:image://h"
    attacker = cut[len(head) :]  # the cut key's own tail, sent as a target
    assert cache_key(NS, "ko_KR", "image", "h", attacker) != cut
    old_style = f"{NS}:ko_KR:image:{victim}"
    old = old_style[:200] + "#" + hashlib.sha256(old_style.encode()).hexdigest()
    assert cache_key(NS, "ko_KR", "image", "h", old[len("gw:v1:ko_KR:image:") :]) != cut


@pytest.mark.parametrize(
    ("target", "other"),
    [
        ("/a|v=g:0", "/a"),  # a target spelling a variant suffix
        ("/a|#=" + "0" * 64, "/a"),
        ("/a||", "/a|"),
        ("/a", "/a|"),
    ],
)
def test_targets_that_spell_suffixes_stay_targets(target, other):
    key = cache_key(NS, "r", "s", "h", target)
    assert decode(key)[4] == target and decode(key)[5] == []
    assert key != cache_key(NS, "r", "s", "h", other)
    assert not is_key_or_variant(key, cache_key(NS, "r", "s", "h", other))


def test_keys_are_readable_and_share_the_service_prefix():
    key = cache_key(NS, "ko_KR", "image", "localhost:9000", "/a.png?s=1")
    assert key == "gw:v1:ko_KR:image://localhost:9000/a.png?s=1"
    assert key.startswith(service_prefix(NS, "ko_KR", "image"))
    # a region or service holding the key's punctuation is quoted, not trusted
    assert cache_key(NS, "ko:KR", "im/age", "h", "/") == "gw:v1:ko%3AKR:im%2Fage://h/"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Example.COM", "example.com"),
        (b"example.com:80", "example.com"),
        (b"example.com:080", "example.com"),
        (b"example.com:", "example.com"),
        (b"example.com:8080", "example.com:8080"),
        (b"[::1]:80", "[::1]"),
        (b"[::1]:6000", "[::1]:6000"),
        (b"127.0.0.1:9000", "127.0.0.1:9000"),
        (b"evil.example/x", None),
        (b"a b", None),
        (b"a;f=00", None),
        (b"a|v=1", None),
        (b"user@host", None),
        (b"host:99999", None),
        (b"x" * 300, None),
        (b"", None),
    ],
)
def test_hosts_are_normalised_or_refused(raw, expected):
    assert normalise_host(raw) == expected
    assert normalise_host(raw) == expected  # the remembered answer is the same


def test_forwarded_fields_change_the_authority_and_are_length_prefixed():
    assert authority_of("h", None) == "h" == authority_of("h", [])
    a = authority_of("h", [(b"x-forwarded-host", b"ab"), (b"x-forwarded-proto", b"c")])
    b = authority_of("h", [(b"x-forwarded-host", b"a"), (b"x-forwarded-proto", b"bc")])
    assert a != b and a.startswith("h;f=") and re.fullmatch(r"h;f=[0-9a-f]{32}", a)


def test_namespaces_are_validated():
    assert msgspec.convert({"namespace": "gw:v2"}, CacheSettings).namespace == "gw:v2"
    for bad in ("gw:", "gw//x", "gw:1", "g w", ""):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"namespace": bad}, CacheSettings)
