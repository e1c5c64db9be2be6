"""Routing, query strings, header rewriting and regions, through real ELBs and proxies."""

from __future__ import annotations

from tests.e2e.harness import RunningFleet, outcome, request


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_request_routes_to_service_with_query_and_rewritten_headers(
    fleet: RunningFleet, token: str
) -> None:
    r = request(
        fleet.kr_elb,
        "/video/echo/a/b?x=1&y=%20z",
        headers={
            **bearer(token),
            "x-request-id": "req-123",
            "connection": "x-secret-hop",
            "x-secret-hop": "must not pass",
            "keep-alive": "timeout=5",
            "x-user": "mallory",
            "x-forwarded-for": "203.0.113.9",
        },
    )
    assert r.status == 200, r
    echo = r.json()
    assert echo["path"] == "/echo/a/b"
    assert echo["query"] == "x=1&y=%20z"
    seen = {k: v for k, v in echo["headers"]}
    assert "x-secret-hop" not in seen and "keep-alive" not in seen
    assert seen["x-request-id"] == "req-123"
    assert r.headers["x-request-id"] == "req-123"
    assert seen["x-user"] == "e2e-user" and seen["x-user-role"] == "user"
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == fleet.kr_elb.removeprefix("http://")
    assert seen["via"].startswith("1.1 proxy-ko_KR-")
    assert "proxy-ko_KR-" in r.headers["via"]


def test_request_id_is_generated_when_missing(fleet: RunningFleet, token: str) -> None:
    r = request(fleet.kr_elb, "/video/echo", headers=bearer(token))
    generated = r.headers["x-request-id"]
    assert len(generated) >= 16
    assert dict(r.json()["headers"])["x-request-id"] == generated


def test_round_robin_spreads_over_instances(fleet: RunningFleet, token: str) -> None:
    names = {
        request(fleet.kr_proxies[0], "/video/echo", headers=bearer(token)).json()["name"]
        for _ in range(6)
    }
    assert names == {f"backend-{fleet.backends[0]}", f"backend-{fleet.backends[1]}"}


def test_unknown_service_and_root_are_404_with_json(fleet: RunningFleet, token: str) -> None:
    for path in ("/nope/x", "/"):
        r = request(fleet.kr_elb, path, headers=bearer(token))
        assert r.status == 404
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"] == "not_found"


def test_region_header_forwards_to_other_region(fleet: RunningFleet, token: str) -> None:
    r = request(fleet.kr_elb, "/sound/echo?q=1", headers={**bearer(token), "x-region": "en_US"})
    assert r.status == 200, r
    echo = r.json()
    assert echo["query"] == "q=1"
    vias = dict(echo["headers"])["via"]
    assert "proxy-ko_KR-" in vias and "proxy-en_US-" in vias


def test_original_clients_region_code_in_accept_language(fleet: RunningFleet, token: str) -> None:
    r = request(fleet.kr_elb, "/sound/echo", headers={**bearer(token), "accept-language": "en_US"})
    assert r.status == 200
    # A browser's language list is not a region request: served locally, where sound is unknown.
    r = request(
        fleet.kr_elb, "/sound/echo", headers={**bearer(token), "accept-language": "en-US,en;q=0.9"}
    )
    assert outcome(r) == (404, "not_found")


def test_unknown_region_is_404_and_service_missing_in_region_is_404(
    fleet: RunningFleet, token: str
) -> None:
    r = request(fleet.kr_elb, "/video/echo", headers={**bearer(token), "x-region": "fr_FR"})
    assert outcome(r) == (404, "not_found") and "fr_FR" in r.json()["detail"]
    r = request(fleet.en_elb, "/image/image.png", headers=bearer(token))
    assert outcome(r) == (404, "not_found")


def test_second_forward_is_a_loop(fleet: RunningFleet, token: str) -> None:
    r = request(
        fleet.en_proxies[0],
        "/video/echo",
        headers={**bearer(token), "x-region": "ko_KR", "x-gateway-hop": "ko_KR"},
    )
    assert r.status == 508
    assert r.json()["error"] == "loop_detected"


def test_malformed_and_oversized_requests_get_json_errors(fleet: RunningFleet) -> None:
    import socket

    host, port = fleet.kr_elb.removeprefix("http://").split(":")

    def raw(data: bytes) -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(data)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    bad = raw(b"GET /video/ HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b'"error":"bad_request"' in bad
    huge = raw(b"GET /video/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
    assert huge.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


def test_http10_client_gets_a_complete_answer(fleet: RunningFleet) -> None:
    import socket

    host, port = fleet.kr_elb.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b'"status":"ok"' in body


def test_admin_is_not_reachable_through_the_elb(fleet: RunningFleet) -> None:
    assert outcome(request(fleet.kr_elb, "/admin/backends")) == (404, "not_found")
    direct = request(fleet.kr_proxies[0], "/admin/backends")
    assert direct.status == 200
    services = {s["service"]: s for s in direct.json()["services"]}
    assert {i["url"] for i in services["video"]["instances"]} == {
        f"http://127.0.0.1:{fleet.backends[0]}",
        f"http://127.0.0.1:{fleet.backends[1]}",
    }
