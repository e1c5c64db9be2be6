"""The inter-region hop mark: made by a proxy with the fleet key, bound to one request."""

from __future__ import annotations

from proxy.hop import MAX_AGE_S, sign_hop, verified_hop

KEY = b"fleet-key-one"
RID = b"req-1"


def test_mark_made_by_a_proxy_verifies() -> None:
    mark = sign_hop(KEY, "ko_KR", RID, 1000.0)
    assert mark.startswith(b"ko_KR;1000;")
    assert verified_hop([b"other", KEY], mark, RID, 1000.0 + MAX_AGE_S)


def test_mark_for_another_request_or_key_or_too_old_does_not() -> None:
    mark = sign_hop(KEY, "ko_KR", RID, 1000.0)
    assert not verified_hop([KEY], mark, b"req-2", 1000.0)
    assert not verified_hop([b"another-key"], mark, RID, 1000.0)
    assert not verified_hop([KEY], mark, RID, 1000.0 + MAX_AGE_S + 1)


def test_forged_or_malformed_marks_do_not() -> None:
    assert not verified_hop([KEY], b"ko_KR", RID, 1000.0)  # what a client might send
    assert not verified_hop([KEY], b"ko_KR;x;abc", RID, 1000.0)
    mark = sign_hop(KEY, "ko_KR", RID, 1000.0)
    tampered = mark.replace(b"ko_KR", b"en_US")
    assert not verified_hop([KEY], tampered, RID, 1000.0)
