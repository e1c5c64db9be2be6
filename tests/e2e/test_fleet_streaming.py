"""Large bodies stream through ELB and proxy in both directions with bounded memory."""

from __future__ import annotations

import hashlib
import http.client

from tests.e2e.harness import RunningFleet

MiB = 1 << 20


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_100_mb_upload_and_download_stream_through(fleet: RunningFleet, token: str) -> None:
    host, port = fleet.kr_proxies[0].removeprefix("http://").split(":")
    proxy_name = f"proxy-ko_KR-{port}"
    pid = fleet.pid(proxy_name)
    before = rss_kib(pid)
    size = 100 * MiB
    block = bytes(range(256)) * 4096  # 1 MiB

    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.putrequest("POST", "/video/upload")
    conn.putheader("authorization", f"Bearer {token}")
    conn.putheader("content-length", str(size))
    conn.endheaders()
    digest = hashlib.sha256()
    for _ in range(size // MiB):
        conn.send(block)
        digest.update(block)
    resp = conn.getresponse()
    result = resp.read()
    assert resp.status == 200, result
    import json

    info = json.loads(result)
    assert info["body_length"] == size
    assert info["body_sha256"] == digest.hexdigest()

    conn.request("GET", f"/video/bytes/{size}", headers={"authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert int(resp.headers["content-length"]) == size
    received = 0
    while chunk := resp.read(MiB):
        received += len(chunk)
    assert received == size
    conn.close()
    grown_mib = (rss_kib(pid) - before) / 1024
    assert grown_mib < 32, f"proxy RSS grew {grown_mib:.1f} MiB while streaming 200 MB"


def test_chunked_upload_is_forwarded_chunked(fleet: RunningFleet, token: str) -> None:
    host, port = fleet.kr_elb.removeprefix("http://").split(":")
    parts = [b"x" * 70_000, b"y" * 5, b"z" * 123_456]
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request(
        "POST",
        "/video/upload",
        body=iter(parts),
        headers={"authorization": f"Bearer {token}", "transfer-encoding": "chunked"},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    import json

    info = json.loads(resp.read())
    conn.close()
    assert resp.status == 200, info
    assert info["body_length"] == sum(map(len, parts))
    assert info["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
