"""How much memory a proxy needs to hold many idle keep-alive connections.

``python -m bench.idle --url http://127.0.0.1:6000/video/index.html --pid PID -n 10000``
opens ``n`` connections, sends one keep-alive request on each (so each is a served,
then idle, HTTP/1.1 connection), and reads the proxy's RSS from ``/proc/PID/status``
before and after. Connections are opened in batches and all closed at the end; the run is
bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path

import trio


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def proxy_pid(port: int) -> int:
    """The PID of the ``proxy PORT ...`` process, read from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg.endswith(b"/proxy") and argv[i + 1] == str(port).encode():
                return int(entry.name)
    raise SystemExit(f"no proxy process listening on port {port} was found")


async def hold(host: str, port: int, request: bytes, streams: list[trio.SocketStream]) -> None:
    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise RuntimeError("closed before answering")
        data += chunk
    streams.append(stream)


async def run(url: str, pid: int, n: int, token: str, limit_s: float) -> None:
    hostport, _, path = url.removeprefix("http://").partition("/")
    host, _, port = hostport.partition(":")
    headers = f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\n"
    if token:
        headers += f"Authorization: Bearer {token}\r\n"
    request = (headers + "\r\n").encode()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 256)), hard))
    before = rss_mib(pid)
    streams: list[trio.SocketStream] = []
    with trio.fail_after(limit_s):
        for start in range(0, n, 500):
            async with trio.open_nursery() as nursery:
                for _ in range(min(500, n - start)):
                    nursery.start_soon(hold, host, int(port), request, streams)
    await trio.sleep(1.0)
    after = rss_mib(pid)
    print(f"idle keep-alive connections held: {len(streams)}")
    print(
        f"proxy RSS before: {before:.1f} MiB  after: {after:.1f} MiB  (+{after - before:.1f} MiB)"
    )
    print(f"per connection: {(after - before) * 1024 / max(1, len(streams)):.2f} KiB")
    for s in streams:
        await s.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--pid", type=int, help="default: the proxy process of --url's port")
    parser.add_argument("-n", type=int, default=10000)
    parser.add_argument("--token", default="")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    pid = args.pid or proxy_pid(int(args.url.removeprefix("http://").split("/")[0].split(":")[1]))
    trio.run(run, args.url, pid, args.n, args.token, args.timeout)


if __name__ == "__main__":
    main()
