"""``fleet units --host NAME``: one systemd unit per process of a host, for operators who
want systemd, not the launcher, to supervise.

The units do what `topology.supervisor` does, in systemd's words: the start order of the
groups is ``After=``/``Wants=`` on the units of earlier groups on the same host (Redis,
backends, auth servers, proxies, ELBs); a child that exits is restarted
(``Restart=always``) after ``RestartSec`` (the launcher's first back-off, 0.5 s) with
systemd's own crash-loop limit (``StartLimitIntervalSec=10``, as `topology.supervisor`
explains); a stop is SIGTERM to the whole control group, SIGKILL after ``TimeoutStopSec``
(the servers' drain plus a margin, `httpio.lifeline.stop_timeout_s`). Each process logs to
the same file as under the launcher.

An ELB's listening socket is a ``.socket`` unit passed as descriptor 3 (``--listen-fd 3``):
systemd holds it across the ELB's restarts as the launcher does, so connections that
arrive while no ELB runs wait in the backlog. Every unit of one host carries the same
``GATEWAY_FLEET_ID`` (the ELB hands clients only to proxies of its own fleet,
`httpio.handoff`). The units set no ``User=``: choose one for the fleet (the hand-off's
trust boundary is the uid, README's security model) and add it before installing.

Pure: `unit_files` returns the files' names and texts; the command line writes them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from httpio.lifeline import stop_timeout_s
from httpio.settings import ServerLimits
from topology.supervisor import ChildSpec

UNIT_PREFIX = "gateway-"
LISTEN_FD = 3  # SD_LISTEN_FDS_START: the first descriptor systemd passes
_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def quote(arg: str) -> str:
    """One ``ExecStart=`` word (systemd.service(5) "Command lines": quotes, backslash
    escapes, ``%`` specifiers and ``$`` variables)."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN.fullmatch(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


# systemd's SIGKILL comes after the servers' drain, a `proxy --workers` parent's grace to its
# workers and a margin (`httpio.lifeline.stop_timeout_s`), for the default drain here;
# `unit_files` is given the fleet's own (`topology.fleet.FleetPlan.stop_grace_s`).
STOP_TIMEOUT_S = stop_timeout_s(ServerLimits().drain_timeout_s)


def unit_name(spec: ChildSpec) -> str:
    return f"{UNIT_PREFIX}{spec.name}"


def _service(
    spec: ChildSpec,
    after: Sequence[str],
    fleet_id: str,
    env_name: str,
    host: str,
    source: str,
    stop_s: float,
) -> str:
    assert spec.argv is not None
    argv = [*spec.argv, "--listen-fd", str(LISTEN_FD)] if spec.listen else list(spec.argv)
    needs = [f"{unit_name(spec)}.socket"] if spec.listen else []
    deps = " ".join([*after, *needs])
    lines = [
        f"# written by `fleet units --host {host}` from {source}",
        "[Unit]",
        f"Description=gateway {spec.kind} {spec.name} on host {host} ({spec.host}:{spec.port})",
        "After=network-online.target" + (f" {deps}" if deps else ""),
        "Wants=network-online.target" + (f" {deps}" if deps else ""),
        *([f"Requires={' '.join(needs)}"] if needs else []),
        "StartLimitIntervalSec=10",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={' '.join(quote(a) for a in argv)}",
        f"Environment={env_name}={fleet_id}",
        "Restart=always",
        "RestartSec=0.5",
        # SIGTERM to the main process alone: `proxy --workers N` passes it on to its workers
        # and waits for their drain. control-group sent it to every worker as well, so each
        # got two (systemd's and the parent's). What is left when the main process is gone,
        # or at the timeout, gets SIGKILL.
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={math.ceil(stop_s)}",
        f"StandardOutput=append:{spec.log}",
        f"StandardError=append:{spec.log}",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=full",
        "# User=gateway",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _socket(spec: ChildSpec, host: str) -> str:
    shown = f"[{spec.host}]" if ":" in spec.host else spec.host
    return "\n".join(
        [
            f"# written by `fleet units --host {host}`: the listening socket of {spec.name}",
            "[Unit]",
            f"Description=listening socket of gateway {spec.name}",
            "",
            "[Socket]",
            f"ListenStream={shown}:{spec.port}",
            "Backlog=4096",
            "NoDelay=yes",
            "",
            "[Install]",
            "WantedBy=sockets.target",
            "",
        ]
    )


def unit_files(
    groups: Sequence[Sequence[ChildSpec]],
    *,
    host: str,
    fleet_id: str,
    env_name: str,
    source: Path,
    stop_s: float = STOP_TIMEOUT_S,
) -> dict[str, str]:
    """File name -> text of every unit for the children of ``groups`` (one host's, in start
    order); ValueError naming a child whose program is missing."""
    files: dict[str, str] = {}
    earlier: list[str] = []
    for group in groups:
        for spec in group:
            if spec.argv is None:
                raise ValueError(f"{spec.name}: {spec.missing}")
            files[f"{unit_name(spec)}.service"] = _service(
                spec, earlier, fleet_id, env_name, host, str(source), stop_s
            )
            if spec.listen:
                files[f"{unit_name(spec)}.socket"] = _socket(spec, host)
        earlier = [*earlier, *(f"{unit_name(s)}.service" for s in group)]
    return files
