"""A REFERENCE, not part of the product: the least a trio process can do per proxied request.

``python -m bench.hop_relay PORT UPSTREAM_PORT``. Issue 14 quotes "a 30-line trio relay that only
looks for ``\\r\\n\\r\\n`` and forwards bytes over one upstream connection" as the floor of
what trio itself costs; this is that relay, kept so the number can be measured again in the
same run as the anchors (`bench.hop`, target ``relay``). It knows just enough HTTP for GETs
with no body answered with a Content-Length, as the benchmark's backend answers:

- it reads a request head up to ``\\r\\n\\r\\n`` and forwards the bytes unchanged except the
  version, sent upstream as HTTP/1.1 so that the upstream connection stays open;
- it takes an idle upstream connection from a list (or opens one), reads the answer's head
  and Content-Length bytes of body, sends them back and puts the connection back; a
  connection the backend closed while it was idle costs one retry on a new one;
- it keeps an HTTP/1.0 client's connection open when the request asks for ``keep-alive``
  (``ab -k``; the backend then says ``Connection: keep-alive`` in its answer), and closes
  it after any other HTTP/1.0 request (``ab``).

No header rewriting, no routing, no timeouts, no limits, no error answers, no h11: each of
those is what the real proxy adds on top, and the gap between the two rows is their price.
"""

from __future__ import annotations

import sys

import trio

_HEAD_END = b"\r\n\r\n"
_RECEIVE = 65536
Upstream = tuple[trio.SocketStream, bytearray]  # a connection and what it has read ahead


async def read_head(stream: trio.SocketStream, buffer: bytearray) -> bytes | None:
    """Bytes up to and including the blank line; None at a clean EOF."""
    while (end := buffer.find(_HEAD_END)) < 0:
        data = await stream.receive_some(_RECEIVE)
        if not data:
            return None
        buffer += data
    head = bytes(buffer[: end + 4])
    del buffer[: end + 4]
    return head


def content_length(head: bytes) -> int:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line[15:])
    return 0


async def ask(upstream: Upstream, request: bytes) -> bytes | None:
    """The answer (head and body) of one request; None if the connection was closed."""
    stream, pending = upstream
    try:
        await stream.send_all(request)
        head = await read_head(stream, pending)
        if head is None:
            return None
        body_left = content_length(head) - len(pending)
        while body_left > 0:
            data = await stream.receive_some(_RECEIVE)
            if not data:
                return None
            pending += data
            body_left -= len(data)
    except trio.BrokenResourceError:
        return None
    answer = head + bytes(pending)
    pending.clear()
    return answer


async def relay(client: trio.SocketStream, upstream_port: int, idle: list[Upstream]) -> None:
    inbox = bytearray()
    while (head := await read_head(client, inbox)) is not None:
        line, _, rest = head.partition(b"\r\n")
        closes = line.endswith(b"HTTP/1.0") and b"keep-alive" not in rest.lower()
        request = line[:-3] + b"1.1\r\n" + rest
        # An idle connection the backend has closed meanwhile gets one retry on a new one.
        while True:
            if idle:
                upstream, fresh = idle.pop(), False
            else:
                stream = await trio.open_tcp_stream("127.0.0.1", upstream_port)
                upstream, fresh = (stream, bytearray()), True
            answer = await ask(upstream, request)
            if answer is not None or fresh:
                break
            await upstream[0].aclose()
        if answer is None:
            return
        await client.send_all(answer)
        idle.append(upstream)
        if closes:
            return


async def serve(port: int, upstream_port: int) -> None:
    idle: list[Upstream] = []

    async def handle(client: trio.SocketStream) -> None:
        async with client:
            try:
                await relay(client, upstream_port, idle)
            except trio.BrokenResourceError:  # a client reset (wrk does, at its end)
                pass

    await trio.serve_tcp(handle, port, host="127.0.0.1")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not all(a.isdigit() for a in args):
        raise SystemExit("usage: python -m bench.hop_relay PORT UPSTREAM_PORT")
    try:
        trio.run(serve, int(args[0]), int(args[1]))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
