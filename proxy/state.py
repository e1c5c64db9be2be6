"""The proxy's configuration as one immutable snapshot, and its reload without a restart.

The three files a proxy is started with (service map, region structure, config.json) are
loaded and checked together into a `ProxyConfig`. A reload builds a complete new snapshot
first and swaps one reference; a file that fails to load is logged with its error and the
running config stays (a half-written file must not take the gateway down). Files are
polled by modification time and size every ``Config_check_interval`` seconds, as the
original did, which needs no inotify and works on every filesystem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import structlog
import trio

from proxy.metrics import count_reload
from topology.load import ConfigError, load_config, load_msa, load_region_structure
from topology.schema import GatewayConfig, MsaFile, RegionStructure, ServiceSpec

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    msa: MsaFile
    rs: RegionStructure
    gateway: GatewayConfig
    region: str
    services: dict[str, ServiceSpec]
    regions: dict[str, list[str]]  # region code -> ELB URLs

    def summary(self) -> dict[str, object]:
        return {
            "region": self.region,
            "services": {n: [i.url for i in s.instances()] for n, s in self.services.items()},
            "regions": self.regions,
            "policy": self.gateway.load_balancer_policy,
        }


REDACTED = "<redacted>"


def redacted_config(config: ProxyConfig) -> dict[str, object]:
    """The whole snapshot as ``/admin/config`` shows it: every key and password replaced."""
    gateway = msgspec.to_builtins(config.gateway)
    for name in ("Auth_key", "Redis_password"):
        if gateway.get(name):
            gateway[name] = REDACTED
    gateway["Auth_keys"] = [
        {"kid": k["kid"], "secret": REDACTED} for k in gateway.get("Auth_keys", [])
    ]
    if isinstance(gateway.get("Auth_store"), str):
        gateway["Auth_store"] = redacted_dsn(gateway["Auth_store"])
    return {
        "gateway": gateway,
        "services": [msgspec.to_builtins(s) for s in config.services.values()],
        "regions": config.regions,
    }


_DSN_PASSWORD = re.compile(r"(?i)(://[^:/?#@]*:)[^@/?#]*@|(\bpassword=)('[^']*'|\S*)")


def redacted_dsn(dsn: str) -> str:
    """A database URL (``postgresql://user:pw@host/db``) or libpq ``key=value`` string with its
    password replaced, so ``Auth_store`` can be shown."""

    def hide(m: re.Match[str]) -> str:
        return f"{m.group(1)}{REDACTED}@" if m.group(1) else f"{m.group(2)}{REDACTED}"

    return _DSN_PASSWORD.sub(hide, dsn)


@dataclass(frozen=True, slots=True)
class ProxyPaths:
    msa: Path
    rs: Path
    config: Path

    def fingerprint(self) -> tuple[tuple[int, int], ...]:
        out = []
        for p in (self.msa, self.rs, self.config):
            try:
                st = os.stat(p)
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((-1, -1))
        return tuple(out)


def load_proxy_config(paths: ProxyPaths) -> ProxyConfig:
    msa = load_msa(paths.msa)
    rs = load_region_structure(paths.rs)
    gateway = load_config(paths.config)
    return ProxyConfig(
        msa=msa,
        rs=rs,
        gateway=gateway,
        region=rs.cur_region_code,
        services={s.name: s for s in msa.service},
        regions={r.region_code: list(r.available_zone) for r in rs.regions},
    )


async def watch_config(
    paths: ProxyPaths,
    apply: Callable[[ProxyConfig], None],
    interval_s: Callable[[], float],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    seen = paths.fingerprint()
    task_status.started()
    while True:
        await trio.sleep(interval_s())
        now = paths.fingerprint()
        if now == seen:
            continue
        seen = now
        try:
            config = load_proxy_config(paths)
        except ConfigError as err:
            log.error("config_reload_refused", error=str(err), kept="previous config")
            count_reload(ok=False)
            continue
        apply(config)
        count_reload(ok=True)
        log.info("config_reloaded", **config.summary())
