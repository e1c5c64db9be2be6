"""`proxy.filters.route`: pure functions, called directly (no event loop, no sockets)."""

from __future__ import annotations

import pytest

from httpio.errors import LoopDetected, RouteNotFound
from httpio.protocol import Headers
from proxy.filters.route import Local, Remote, requested_region, route, split_service
from proxy.hop import HOP_HEADER

REGIONS = ("ko_KR", "en_US")
SERVICES = ("image", "video", "auth")


def route_in_kr(path: str, query: str = "", headers: Headers | None = None) -> Local | Remote:
    return route(
        path, query, headers or [], local_region="ko_KR", regions=REGIONS, services=SERVICES
    )


# -- the service and the upstream target ------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/image/a/b.png", "", ("image", "/a/b.png")),
        ("/image", "", ("image", "/")),
        ("/image/", "", ("image", "/")),
        ("/image/a//b/", "", ("image", "/a//b/")),
        ("/image/a%2Fb", "", ("image", "/a%2Fb")),
        ("/video/x", "a=1&b=%20c&&d=?e=f&g", ("video", "/x?a=1&b=%20c&&d=?e=f&g")),
        ("/video", "q", ("video", "/?q")),
    ],
)
def test_split_service_keeps_rest_and_query_byte_for_byte(
    path: str, query: str, expected: tuple[str, str]
) -> None:
    assert split_service(path, query) == expected


@pytest.mark.parametrize("path", ["/", "//x", "//", "", "image/a", "*"])
def test_no_service_in_path_is_404(path: str) -> None:
    with pytest.raises(RouteNotFound) as info:
        split_service(path, "")
    assert info.value.status == 404


def test_local_route_carries_service_and_target() -> None:
    assert route_in_kr("/image/a.png", "w=10") == Local("image", "/a.png?w=10")


def test_root_and_empty_service_are_404_through_route() -> None:
    for path in ("/", "//x"):
        with pytest.raises(RouteNotFound):
            route_in_kr(path)


def test_unknown_service_is_404_naming_it() -> None:
    with pytest.raises(RouteNotFound) as info:
        route_in_kr("/sound/a.mp3")
    assert info.value.status == 404
    assert "sound" in info.value.detail


# -- the region -------------------------------------------------------------------------------
def test_no_region_headers_means_local() -> None:
    assert requested_region([(b"host", b"x")]) is None
    assert route_in_kr("/video/v") == Local("video", "/v")


def test_x_region_wins_over_accept_language() -> None:
    headers = [(b"accept-language", b"ko_KR"), (b"x-region", b"en_US")]
    assert requested_region(headers) == "en_US"
    assert route_in_kr("/sound/s", headers=headers) == Remote("en_US")
    # and in the other order of the header lines
    assert requested_region(list(reversed(headers))) == "en_US"


def test_x_region_is_stripped() -> None:
    assert requested_region([(b"x-region", b"  en_US ")]) == "en_US"


def test_empty_x_region_falls_back_to_accept_language() -> None:
    assert requested_region([(b"x-region", b""), (b"accept-language", b"en_US")]) == "en_US"


@pytest.mark.parametrize("value", [b"ko_KR", b"en_US", b" en_US "])
def test_accept_language_exactly_a_region_code_selects_it(value: bytes) -> None:
    assert requested_region([(b"accept-language", value)]) == value.strip().decode()


@pytest.mark.parametrize(
    "value",
    [
        b"ko-KR,ko;q=0.9",
        b"en-US,en;q=0.9,ko;q=0.8",
        b"ko-KR",
        b"ko",
        b"en_US,ko_KR",
        b"en_us",
        b"*",
        b"",
    ],
)
def test_browser_language_lists_are_not_region_requests(value: bytes) -> None:
    headers = [(b"accept-language", value)]
    assert requested_region(headers) is None
    assert route_in_kr("/image/a", headers=headers) == Local("image", "/a")


def test_local_region_asked_explicitly_is_local() -> None:
    assert route_in_kr("/image/a", headers=[(b"x-region", b"ko_KR")]) == Local("image", "/a")


def test_remote_region_is_not_checked_for_the_service() -> None:
    # The serving region knows its own services; this one only forwards.
    assert route_in_kr("/sound/s", headers=[(b"x-region", b"en_US")]) == Remote("en_US")
    assert route_in_kr("/", headers=[(b"x-region", b"en_US")]) == Remote("en_US")


@pytest.mark.parametrize(
    "headers",
    [[(b"x-region", b"ja_JP")], [(b"accept-language", b"ja_JP")], [(b"x-region", b"nowhere")]],
)
def test_unknown_region_is_404(headers: Headers) -> None:
    with pytest.raises(RouteNotFound) as info:
        route_in_kr("/image/a", headers=headers)
    assert info.value.status == 404
    assert "region" in info.value.detail


# -- loops ------------------------------------------------------------------------------------
def test_remote_region_with_hop_header_is_508() -> None:
    headers = [(b"x-region", b"en_US"), (HOP_HEADER, b"ko_KR")]
    with pytest.raises(LoopDetected) as info:
        route_in_kr("/sound/s", headers=headers)
    assert info.value.status == 508


def test_hop_header_for_the_local_region_is_served() -> None:
    # What the en_US proxy sees after the ko_KR proxy forwarded once: served, not a loop.
    headers = [(b"x-region", b"en_US"), (HOP_HEADER, b"ko_KR")]
    decision = route(
        "/sound/s", "", headers, local_region="en_US", regions=REGIONS, services=("sound",)
    )
    assert decision == Local("sound", "/s")
