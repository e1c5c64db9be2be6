"""What a fleet keeps across restarts: its signing key and its user database.

The original shipped ``Auth_key: "private_key"`` in config.json, so anyone could sign a token
(any user, any role) that every proxy accepted, and forge the inter-region hop mark. A fleet
now makes its own key on first start: 32 random bytes from `secrets`, base64url-encoded (43
characters), in ``<state>/fleet.key``. Later starts read it back, so the tokens a fleet
issued stay valid when a child or the whole fleet restarts; the auth database lives beside
it for the same reason (users survive a restart of ``make fleet``).

The state directory is ``run/state/`` for ``make fleet`` (its run directories are
``run/<timestamp>/``), and ``<run_dir>/state/`` for a fleet given its own run directory (the
tests' `open_fleet`, ``fleet --run-dir``). It is created 0700 and the key file 0600; a
directory or key owned by another user is refused rather than used, as OpenSSH refuses a
private key others can read. The key reaches the processes only through the config.json
the launcher writes (0600, like every run file) and is never printed.

A topology whose config.json names its own keys (``Auth_key``/``Auth_keys``, e.g. the
original's files) keeps them: the operator chose them, and the processes say loudly if they
are weak (`authsvc.tokens.KeyRing.weaknesses`).
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import msgspec

from topology.schema import MIN_KEY_BYTES, AuthKey, GatewayConfig, derive_kid

KEY_FILE = "fleet.key"
_KEY_BYTES = 32


class StateError(OSError):
    """The state directory or key cannot be trusted (another owner, unreadable, too short)."""


@dataclass(frozen=True, slots=True)
class PersistentState:
    path: Path
    key: str

    def __repr__(self) -> str:  # never the key
        return f"<PersistentState {self.path}>"


def _check_owner(path: Path, st: os.stat_result) -> None:
    if st.st_uid != os.getuid():
        raise StateError(f"{path} belongs to uid {st.st_uid}, not to us: refusing to use it")


def write_private(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` readable by us only (0600), also if it existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, content)
    finally:
        os.close(fd)


def _read_key(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        _check_owner(path, st)
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
        key = os.read(fd, 4096).decode("ascii").strip()
    finally:
        os.close(fd)
    if len(key) < MIN_KEY_BYTES:
        raise StateError(f"{path} holds {len(key)} bytes; a fleet key needs {MIN_KEY_BYTES}+")
    return key


def _new_key(path: Path) -> str | None:
    """Create the key file; None if another launcher created it first."""
    key = secrets.token_urlsafe(_KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return None
    try:
        os.write(fd, key.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def open_persistent_state(path: str | Path) -> PersistentState:
    """The fleet's state directory (created 0700) and key (created on first use)."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    _check_owner(path, st)
    if stat.S_IMODE(st.st_mode) & 0o077:
        path.chmod(0o700)
    key_path = path / KEY_FILE
    key = _new_key(key_path) if not key_path.exists() else None
    return PersistentState(path, key if key is not None else _read_key(key_path))


def with_fleet_key(config: GatewayConfig, state: PersistentState) -> GatewayConfig:
    """``config`` signing with the fleet's key, unless it names keys of its own."""
    if config.auth_key or config.auth_keys:
        return config
    return msgspec.structs.replace(
        config, auth_keys=[AuthKey(kid=derive_kid(state.key), secret=state.key)]
    )
