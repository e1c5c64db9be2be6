"""Hand-off over a real ``SOCK_SEQPACKET`` link: the test plays the ELB (a TCP listener, a
client connected to it, and a `HandoffLink`) and hands the accepted socket to an in-process
`HttpServer` running `serve_handoffs`. Then whose socket it is: fleet, network namespace,
port and uid in the hand-shake; names that keep fleets apart; the runtime directory's checks;
stale and live socket files; never unlinking someone else's socket."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from httpio.handoff import (
    HandoffAddress,
    HandoffLink,
    HandoffRefused,
    Identity,
    UnsafeRuntimeDir,
    handoff_address,
    judge_peer,
    network_namespace,
    private_dir,
    serve_handoffs,
)
from httpio.listen import open_listeners
from httpio.messages import Request, Response, json_response
from httpio.server import HttpServer

DEADLINE_S = 10.0
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket path has room for 107 bytes, and
    pytest's ``tmp_path`` plus a socket name can exceed it."""
    path = Path(tempfile.mkdtemp(prefix="gw-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def whoami(request: Request) -> Response:
    return json_response(200, {"client": list(request.client), "via_elb": request.via_elb})


def address_of(fleet: str = "", port: int = 6000, directory: Path | None = None) -> HandoffAddress:
    """An abstract address (or a file in ``directory``) of a fleet no other test shares."""
    fleet = f"{fleet or 'test'}-{secrets.token_hex(6)}"
    return HandoffAddress(Identity(fleet, network_namespace(), port), directory)


@asynccontextmanager
async def proxy_with_handoffs(address: HandoffAddress) -> AsyncIterator[HttpServer]:
    server = HttpServer(whoami, name="proxy")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, await open_listeners(0))
        await nursery.start(serve_handoffs, server, address)
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def elb_accepts() -> AsyncIterator[tuple[trio.SocketStream, trio.socket.SocketType]]:
    """A client connected to the ELB's listener, and the ELB's accepted end of it."""
    with trio.socket.socket() as listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = await trio.open_tcp_stream(*listener.getsockname())
        async with client:
            accepted, _ = await listener.accept()
            with accepted:
                yield client, accepted


async def exchange(client: trio.SocketStream, request: bytes) -> bytes:
    await client.send_all(request)
    received = b""
    with trio.fail_after(DEADLINE_S):
        while data := await client.receive_some(65536):
            received += data
    return received


def body_of(response: bytes) -> object:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    return msgspec.json.decode(body)


GET_AND_CLOSE = b"GET /whoami HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n"


async def test_handed_off_connection_is_served_with_the_real_peer() -> None:
    address = address_of()
    async with proxy_with_handoffs(address) as server:
        link = HandoffLink(address)
        await link.connect()
        assert repr(link) == f"<HandoffLink {address} connected=True in_flight=0>"
        assert link.peer_pid == os.getpid()
        async with elb_accepts() as (client, accepted):
            await link.send(accepted.fileno())
            accepted.close()  # the ELB forgets it: from now on only the proxy holds it
            response = await exchange(client, GET_AND_CLOSE)
            peer = client.socket.getsockname()
        assert body_of(response) == {"client": [peer[0], peer[1]], "via_elb": True}
        with trio.fail_after(DEADLINE_S):
            assert await link.closed_connections() >= 1
        assert server.requests_served == 1 and server.open_connections == 0
        link.close()
        assert link.sock is None


async def test_connections_outlive_the_link_that_brought_them() -> None:
    address = address_of()
    async with proxy_with_handoffs(address):
        link = HandoffLink(address)
        await link.connect()
        async with elb_accepts() as (client, accepted):
            await link.send(accepted.fileno())
            accepted.close()
            link.close()  # the ELB restarts
            assert body_of(await exchange(client, GET_AND_CLOSE)) == {
                "client": list(client.socket.getsockname()),
                "via_elb": True,
            }


async def test_drain_closes_the_handoff_socket(short_dir: Path) -> None:
    address = address_of(directory=private_dir(short_dir / "run"))
    path = address.path
    assert path is not None
    async with proxy_with_handoffs(address) as server:
        link = HandoffLink(address)
        await link.connect()
        with trio.fail_after(DEADLINE_S):
            await server.drain()
            assert await link.closed_connections() == -1  # EOF: send it nothing more
            while path.exists():  # noqa: ASYNC110 (the listener goes after the links)
                await trio.sleep(0.001)
        with pytest.raises(OSError):
            await HandoffLink(address).connect()
        link.close()


async def test_closing_the_link_while_its_reports_are_awaited_ends_them() -> None:
    """The ELB's dispatcher closes a link after a failed send while another task waits for
    that link's close reports; the waiter must see "gone", not crash the ELB."""
    address = address_of()
    async with proxy_with_handoffs(address):
        link = HandoffLink(address)
        await link.connect()
        results: list[int] = []

        async def follow() -> None:
            results.append(await link.closed_connections())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await trio.testing.wait_all_tasks_blocked()
            link.close()
    assert results == [-1]


async def test_link_to_a_missing_proxy_fails_to_connect(short_dir: Path) -> None:
    for address in (address_of(), address_of(directory=short_dir)):
        link = HandoffLink(address)
        with pytest.raises(OSError):
            await link.connect()
        assert link.sock is None


# -- whose socket: the hand-shake --------------------------------------------------------------
def test_identities_round_trip_and_garbage_is_no_identity() -> None:
    me = Identity("fleet-1", 4026531840, 6000)
    assert Identity.parse(me.encode(b"hello"), b"hello") == me
    assert Identity.parse(me.encode(b"hello"), b"ok") is None
    for garbage in (b"", b"x", b"pygateway-handoff/1 hello", me.encode(b"hello") + b" more"):
        assert Identity.parse(garbage, b"hello") is None
    assert Identity.parse(b"pygateway-handoff/1 ok fleet=a netns=x port=1", b"ok") is None


def test_judge_peer_names_what_does_not_match() -> None:
    me = Identity("a", 1, 6000)
    uid = os.geteuid()
    assert judge_peer(me, Identity("a", 1, 6000), uid) == ""
    assert "uid" in judge_peer(me, Identity("a", 1, 6000), uid + 1)
    assert judge_peer(me, None, uid) == "no hand-shake"
    assert "fleet 'b'" in judge_peer(me, Identity("b", 1, 6000), uid)
    assert "network namespace 2" in judge_peer(me, Identity("a", 2, 6000), uid)
    assert "port 6001" in judge_peer(me, Identity("a", 1, 6001), uid)


async def test_an_elb_of_another_fleet_is_refused_by_the_proxy(short_dir: Path) -> None:
    """Two fleets sharing a runtime directory (the /tmp of two network namespaces): even if
    one finds the other's socket, the hand-shake keeps them apart."""
    proxy = address_of("fleet-a", directory=private_dir(short_dir / "run"))
    assert proxy.path is not None
    ours = proxy.identity
    async with proxy_with_handoffs(proxy):
        # the other fleet's ELB aims at our socket file, with its own identity
        aimed = _AimedAddress(Identity("fleet-b", ours.netns, 6000), str(proxy.path))
        with pytest.raises(HandoffRefused, match="fleet 'fleet-b'"):
            await HandoffLink(aimed).connect()
        wrong_port = _AimedAddress(Identity(ours.fleet, ours.netns, 6001), str(proxy.path))
        with pytest.raises(HandoffRefused, match="port 6001"):
            await HandoffLink(wrong_port).connect()
        other_netns = _AimedAddress(Identity(ours.fleet, 1, 6000), str(proxy.path))
        with pytest.raises(HandoffRefused, match="network namespace 1"):
            await HandoffLink(other_netns).connect()
        link = HandoffLink(proxy)  # our own ELB still gets in
        await link.connect()
        link.close()


class _AimedAddress(HandoffAddress):
    """An address whose socket is somewhere else than its identity says."""

    def __init__(self, identity: Identity, sockaddr: str) -> None:
        super().__init__(identity)
        object.__setattr__(self, "_target", sockaddr)

    @property
    def sockaddr(self) -> str | bytes:
        return str(object.__getattribute__(self, "_target"))


STRANGER_ELB = """
import os, socket, sys
os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(bytes.fromhex(sys.argv[1]))
s.send(sys.argv[2].encode())
print(s.recv(512).decode(), flush=True)
"""

STRANGER_PROXY = """
import os, socket, sys
os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind(bytes.fromhex(sys.argv[1]))
s.listen()
print("listening", flush=True)
conn, _ = s.accept()
conn.send(sys.argv[2].encode())  # says all the right words
sys.stdin.read()
"""


@as_root
async def test_an_elb_run_by_another_user_is_refused() -> None:
    address = address_of()
    raw = address.sockaddr
    assert isinstance(raw, bytes)
    async with proxy_with_handoffs(address):
        hello = address.identity.encode(b"hello").decode()
        done = await trio.run_process(
            [sys.executable, "-c", STRANGER_ELB, raw.hex(), hello], capture_stdout=True
        )
    assert done.stdout.decode().startswith("pygateway-handoff/1 refused peer runs as uid 65534")


@as_root
async def test_a_proxy_run_by_another_user_is_refused() -> None:
    address = address_of()
    raw = address.sockaddr
    assert isinstance(raw, bytes)
    ok = address.identity.encode(b"ok").decode()
    stranger = await trio.lowlevel.open_process(
        [sys.executable, "-c", STRANGER_PROXY, raw.hex(), ok],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert stranger.stdout is not None
        said = b""
        with trio.fail_after(DEADLINE_S):
            while not said.endswith(b"\n"):
                said += await stranger.stdout.receive_some(100)
        assert said == b"listening\n"
        with pytest.raises(HandoffRefused, match="uid 65534"):
            await HandoffLink(address).connect()
    finally:
        stranger.kill()
        await stranger.wait()
        for pipe in (stranger.stdin, stranger.stdout):
            if pipe is not None:
                await pipe.aclose()


# -- whose socket: names -----------------------------------------------------------------------
def test_the_address_comes_from_the_fleet_and_the_network_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GATEWAY_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("GATEWAY_FLEET_ID", raising=False)
    standalone = handoff_address(6000)
    assert standalone is not None and standalone.path is None
    assert standalone.identity == Identity("standalone", network_namespace(), 6000)
    uid = os.geteuid()
    assert standalone.sockaddr == (
        f"\0pygateway-{uid}-standalone-net{network_namespace()}-proxy-6000".encode()
    )
    assert str(standalone) == f"@pygateway-{uid}-standalone-net{network_namespace()}-proxy-6000"
    monkeypatch.setenv("GATEWAY_FLEET_ID", "f00d")
    fleet = handoff_address(6000)
    assert fleet is not None and fleet.sockaddr != standalone.sockaddr
    monkeypatch.setenv("GATEWAY_FLEET_ID", "../../etc")
    with pytest.raises(ValueError, match="GATEWAY_FLEET_ID"):
        handoff_address(6000)


def test_each_worker_of_a_proxy_has_an_address_of_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("GATEWAY_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("GATEWAY_FLEET_ID", "f00d")
    single, w0, w1 = handoff_address(6000), handoff_address(6000, 0), handoff_address(6000, 1)
    assert single is not None and w0 is not None and w1 is not None
    assert str(w1) == f"{single}-w1" and len({single.sockaddr, w0.sockaddr, w1.sockaddr}) == 3
    assert single.identity == w0.identity == w1.identity  # one proxy: the same hand-shake
    assert single.of_worker(1) == w1 and w1.of_worker(None) == single
    monkeypatch.setenv("GATEWAY_RUNTIME_DIR", str(tmp_path / "run"))
    in_dir = handoff_address(6000, 1)
    assert in_dir is not None and in_dir.path is not None
    assert in_dir.path.name == f"f00d-net{network_namespace()}-proxy-6000-w1.sock"


async def test_two_fleets_on_the_same_port_get_two_sockets() -> None:
    a, b = address_of("fleet-a", 6000), address_of("fleet-b", 6000)
    assert a.sockaddr != b.sockaddr
    async with proxy_with_handoffs(a), proxy_with_handoffs(b):
        for address in (a, b):
            link = HandoffLink(address)
            await link.connect()
            link.close()


async def test_a_taken_abstract_name_leaves_the_holder_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    address = address_of()
    async with proxy_with_handoffs(address):
        server = HttpServer(whoami, name="second")
        with trio.fail_after(DEADLINE_S):
            await serve_handoffs(server, address)  # returns: no hand-offs for this one
        link = HandoffLink(address)
        await link.connect()  # the first proxy still has its socket
        assert link.peer_pid == os.getpid()
        link.close()


# -- whose socket: the runtime directory -------------------------------------------------------
def test_the_runtime_dir_is_created_private(tmp_path: Path) -> None:
    path = private_dir(tmp_path / "a" / "run")
    assert (path.stat().st_mode & 0o777) == 0o700
    assert private_dir(path) == path  # already there and fine


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o701, 0o711])
def test_a_runtime_dir_others_can_enter_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "run"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(UnsafeRuntimeDir, match=f"mode {mode:o}"):
        private_dir(path)


def test_a_symlink_or_a_file_is_no_runtime_dir(tmp_path: Path) -> None:
    real = private_dir(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UnsafeRuntimeDir, match="not a directory"):
        private_dir(link)
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(UnsafeRuntimeDir, match="not a directory"):
        private_dir(file)


@as_root
def test_a_runtime_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(UnsafeRuntimeDir, match=f"owned by uid {NOBODY}"):
        private_dir(path)


def test_an_unsafe_runtime_dir_gives_no_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "shared"
    path.mkdir(mode=0o777)
    path.chmod(0o777)
    monkeypatch.setenv("GATEWAY_RUNTIME_DIR", str(path))
    with pytest.raises(UnsafeRuntimeDir):
        handoff_address(6000)
    monkeypatch.setenv("GATEWAY_RUNTIME_DIR", str(tmp_path / "mine"))
    address = handoff_address(6000)
    assert address is not None and address.path is not None
    assert address.path.parent == tmp_path / "mine"
    assert address.path.name == f"standalone-net{network_namespace()}-proxy-6000.sock"


async def test_a_stale_socket_file_is_replaced(short_dir: Path) -> None:
    address = address_of(directory=private_dir(short_dir / "run"))
    assert address.path is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as dead:
        dead.bind(str(address.path))  # bound, never listening: what a SIGKILL leaves
    async with proxy_with_handoffs(address):
        link = HandoffLink(address)
        await link.connect()
        link.close()


async def test_a_live_socket_file_is_not_taken_over(short_dir: Path) -> None:
    address = address_of(directory=private_dir(short_dir / "run"))
    assert address.path is not None
    async with proxy_with_handoffs(address):
        inode = address.path.stat().st_ino
        with trio.fail_after(DEADLINE_S):
            await serve_handoffs(HttpServer(whoami, name="second"), address)
        assert address.path.stat().st_ino == inode
        link = HandoffLink(address)
        await link.connect()
        link.close()


async def test_a_file_that_is_not_our_socket_is_left_alone(short_dir: Path) -> None:
    address = address_of(directory=private_dir(short_dir / "run"))
    assert address.path is not None
    address.path.write_text("not a socket")
    with trio.fail_after(DEADLINE_S):
        await serve_handoffs(HttpServer(whoami, name="proxy"), address)
    assert address.path.read_text() == "not a socket"


async def test_a_socket_that_replaced_ours_is_not_unlinked_when_we_stop(short_dir: Path) -> None:
    address = address_of(directory=private_dir(short_dir / "run"))
    path = address.path
    assert path is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as theirs:
        async with proxy_with_handoffs(address):
            path.unlink()  # someone else removed ours and bound their own
            theirs.bind(str(path))
            theirs.listen()
            inode = path.stat().st_ino
        assert path.exists() and path.stat().st_ino == inode
