"""Hostile requests against `HttpCache.handle` with a real Redis: no user gets another user's
answer, and no request can plant an entry that others are served (RFC 9111 2 and 3.5)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import pytest

from httpio.messages import Request, Response
from proxy.cache.layer import HttpCache
from topology.schema import CacheSettings, ServiceCacheSettings

ON = ServiceCacheSettings(enabled=True, default_ttl_s=30.0)
SETTINGS = CacheSettings(namespace="gw:t")
HOST = (b"host", b"img.test")


class Body:
    def __init__(self) -> None:
        self.done = True

    async def read(self) -> bytes:
        return b""

    async def read_all(self) -> bytes:
        return b""


def request(
    target: str = "/echo?u=1", headers: Sequence[tuple[bytes, bytes]] = (HOST,), method="GET"
) -> Request:
    path, _, query = target.partition("?")
    body: Any = Body()
    return Request(method, target, path, query, list(headers), "1.1", ("127.0.0.1", 4000), body)


class EchoOrigin:
    """Like the demo backend's ``/echo``: the answer reflects every request header, and
    carries whatever ``Cache-Control`` the test asks for (none by default)."""

    def __init__(self, cache_control: bytes | None = None) -> None:
        self.cache_control = cache_control
        self.calls = 0

    def fetch_for(self, req: Request):
        async def fetch() -> Response:
            self.calls += 1
            headers = [(b"content-type", b"application/json")]
            if self.cache_control is not None:
                headers.append((b"cache-control", self.cache_control))
            seen = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers]
            body = json.dumps({"serial": self.calls, "headers": seen}).encode()
            return Response(200, headers, body)

        return fetch


async def send(
    cache: HttpCache,
    origin: EchoOrigin,
    req: Request,
    *,
    settings: ServiceCacheSettings = ON,
    target: str | None = None,
) -> tuple[str, dict[str, Any]]:
    response = await cache.handle(
        req,
        region="ko_KR",
        service="image",
        upstream_path_and_query=target or req.target,
        settings=settings,
        fetch=origin.fetch_for(req),
    )
    assert isinstance(response.body, bytes)
    label = dict(response.headers)[b"x-cache"].decode()
    return label, json.loads(response.body)


def reflected(body: dict[str, Any]) -> dict[str, str]:
    return {n: v for n, v in body["headers"]}


@pytest.fixture
def cache(redis_pool) -> HttpCache:
    return HttpCache(SETTINGS, redis_pool)


CREDENTIALS = [
    (b"authorization", b"Bearer alice.jwt", b"Bearer bob.jwt"),
    (b"authtoken", b"alice.jwt", b"bob.jwt"),
    (b"authtoken", b'{"token": "alice.jwt"}', b'{"token": "bob.jwt"}'),
    (b"authorization", b"Basic YWxpY2U6cHc=", b"Basic Ym9iOnB3"),
    (b"cookie", b"sid=alice", b"sid=bob"),
]


# -- RFC 9111 3.5: answers to authenticated requests ------------------------------------------
@pytest.mark.parametrize(("name", "alice", "bob"), CREDENTIALS)
async def test_an_answer_to_one_user_is_never_served_to_another(cache, name, alice, bob):
    origin = EchoOrigin()  # no Cache-Control: the service's default_ttl_s used to apply
    label, body = await send(cache, origin, request(headers=[HOST, (name, alice)]))
    assert label == "MISS" and reflected(body)[name.decode()] == alice.decode()
    label, body = await send(cache, origin, request(headers=[HOST, (name, bob)]))
    assert label == "MISS", "Bob was served Alice's answer"
    assert reflected(body)[name.decode()] == bob.decode()
    assert cache.statistics()["not_storable"] == {
        "authenticated request, response not marked shareable": 2
    }


@pytest.mark.parametrize(
    ("cache_control", "shared"),
    [
        (b"public, max-age=60", True),
        (b"s-maxage=60", True),
        (b"must-revalidate, max-age=60", True),
        (b"max-age=60", False),  # fresh, but not said to be shareable
        (b"public", False),  # shareable, but no lifetime of its own: no default for it
        (b"public, max-age=60, private", False),
    ],
)
async def test_an_answer_to_an_authenticated_request_is_shared_only_when_it_says_so(
    cache, cache_control, shared
):
    origin = EchoOrigin(cache_control)
    await send(cache, origin, request(headers=[HOST, (b"authorization", b"Bearer a")]))
    label, _ = await send(cache, origin, request(headers=[HOST, (b"authorization", b"Bearer b")]))
    assert (label == "HIT") is shared


async def test_anonymous_answers_still_get_the_default_ttl(cache):
    origin = EchoOrigin()
    await send(cache, origin, request())
    assert (await send(cache, origin, request()))[0] == "HIT"


# -- the authority is keyed -------------------------------------------------------------------
async def test_the_host_is_part_of_the_key(cache):
    origin = EchoOrigin(b"public, max-age=60")
    label, body = await send(cache, origin, request(headers=[(b"host", b"evil.example")]))
    assert label == "MISS" and reflected(body)["host"] == "evil.example"
    label, body = await send(cache, origin, request(headers=[HOST]))
    assert label == "MISS" and reflected(body)["host"] == "img.test"
    # the same authority spelled differently is the same entry (RFC 9110 4.2.3)
    label, body = await send(cache, origin, request(headers=[(b"host", b"IMG.test:80")]))
    assert label == "HIT" and reflected(body)["host"] == "img.test"


@pytest.mark.parametrize(
    "host",
    [b"evil.example/../x", b"a b", b"a;f=0", b"x" * 300, b"img.test@evil", b"img.test:70000"],
)
async def test_a_host_we_cannot_key_bypasses_the_cache(cache, host):
    origin = EchoOrigin(b"public, max-age=60")
    label, _ = await send(cache, origin, request(headers=[(b"host", host)]))
    assert label == "BYPASS"
    assert (await send(cache, origin, request()))[0] == "MISS"
    assert cache.statistics()["bypass_reasons"] == {"host": 1}


async def test_two_hosts_bypass_the_cache(cache):
    origin = EchoOrigin(b"public, max-age=60")
    label, _ = await send(cache, origin, request(headers=[HOST, (b"host", b"evil.example")]))
    assert label == "BYPASS"


@pytest.mark.parametrize(
    "name", [b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port", b"forwarded"]
)
async def test_forwarded_authority_fields_are_keyed(cache, name):
    """Our hops set these and origins build links from them: keyed, not bypassed (every
    request from another region carries them)."""
    origin = EchoOrigin(b"public, max-age=60")
    poisoned = request(headers=[HOST, (name, b"evil.example")])
    label, body = await send(cache, origin, poisoned)
    assert label == "MISS" and reflected(body)[name.decode()] == "evil.example"
    label, body = await send(cache, origin, request())
    assert label == "MISS" and name.decode() not in reflected(body)
    assert (await send(cache, origin, request(headers=[HOST, (name, b"evil.example")])))[0] == "HIT"


# -- unkeyed inputs that reroute the request at the origin ------------------------------------
@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"x-original-url", b"/admin"),
        (b"x-rewrite-url", b"/admin"),
        (b"x-forwarded-scheme", b"nothttps"),
        (b"x-forwarded-prefix", b"/evil"),
        (b"x-host", b"evil.example"),
        (b"x-http-method-override", b"POST"),
    ],
)
async def test_routing_headers_never_reach_the_store(cache, name, value):
    origin = EchoOrigin(b"public, max-age=60")
    label, _ = await send(cache, origin, request(headers=[HOST, (name, value)]))
    assert label == "BYPASS"
    label, body = await send(cache, origin, request())
    assert label == "MISS" and name.decode() not in reflected(body)
    # and an entry already there is not answered to them either: the origin serves them
    label, _ = await send(cache, origin, request(headers=[HOST, (name, value)]))
    assert label == "BYPASS"
    assert cache.statistics()["bypass_reasons"] == {"routing header": 2}


async def test_a_method_override_to_an_unsafe_method_invalidates(cache, redis_pool):
    origin = EchoOrigin(b"public, max-age=60")
    await send(cache, origin, request())
    assert await redis_pool.execute("EXISTS", "gw:t:ko_KR:image://img.test/echo?u=1") == 1
    await send(cache, origin, request(headers=[HOST, (b"x-http-method-override", b"DELETE")]))
    assert await redis_pool.execute("EXISTS", "gw:t:ko_KR:image://img.test/echo?u=1") == 0
    assert (await send(cache, origin, request()))[0] == "MISS"


async def test_an_unkeyed_reflected_header_does_not_poison_an_authenticated_service(cache):
    """``X-Evil`` is reflected by an origin that sends no Vary: on a service whose callers
    are signed in, that answer is not stored at all (3.5), so nobody else gets it."""
    origin = EchoOrigin()
    evil = [HOST, (b"authorization", b"Bearer a"), (b"x-evil", b"<script>alert(1)</script>")]
    await send(cache, origin, request(headers=evil))
    label, body = await send(cache, origin, request(headers=[HOST, (b"authorization", b"B b")]))
    assert label == "MISS" and "x-evil" not in reflected(body)


async def test_declared_key_headers_are_keyed(cache):
    keyed = ServiceCacheSettings(enabled=True, default_ttl_s=30.0, key_headers=("x-evil",))
    origin = EchoOrigin()
    evil = request(headers=[HOST, (b"x-evil", b"<script>")])
    assert (await send(cache, origin, evil, settings=keyed))[0] == "MISS"
    label, body = await send(cache, origin, request(), settings=keyed)
    assert label == "MISS" and "x-evil" not in reflected(body)
    assert (await send(cache, origin, request(), settings=keyed))[0] == "HIT"
    assert (await send(cache, origin, evil, settings=keyed))[0] == "HIT"


async def test_an_entry_stored_before_key_headers_were_declared_is_not_served(cache):
    origin = EchoOrigin()
    await send(cache, origin, request(headers=[HOST, (b"x-evil", b"<script>")]))
    keyed = ServiceCacheSettings(enabled=True, default_ttl_s=30.0, key_headers=("x-evil",))
    label, body = await send(cache, origin, request(), settings=keyed)
    assert label == "MISS" and "x-evil" not in reflected(body)
    assert (await send(cache, origin, request(), settings=keyed))[0] == "HIT"


# -- long keys --------------------------------------------------------------------------------
async def test_a_chosen_short_target_does_not_collide_with_a_long_one(cache):
    """The old cut form was ``key[:200] + "#" + sha256(key)`` for keys over 512 characters:
    an attacker who knows a victim's long URL sends the cut key's tail as a short target."""
    origin = EchoOrigin(b"public, max-age=60")
    victim = "/echo?q=" + "v" * 600
    head = "gw:t:ko_KR:image:"
    old_key = head + victim
    tail = old_key[:200][len(head) :] + "#" + hashlib.sha256(old_key.encode()).hexdigest()
    attacker = request(tail, headers=[HOST, (b"x-note", b"attacker was here")])
    assert (await send(cache, origin, attacker))[0] == "MISS"
    label, body = await send(cache, origin, request(victim))
    assert label == "MISS" and "x-note" not in reflected(body)
    assert (await send(cache, origin, request(victim)))[0] == "HIT"
