"""`proxy.state`: loading the three files into one snapshot, and reloading them by polling.

The reload tests run on trio's autojump clock, so a poll interval of seconds costs no wall
time; files are changed between polls, and their mtime is set explicitly so that a change
never depends on the filesystem's timestamp granularity.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
import trio

from proxy.state import ProxyConfig, ProxyPaths, load_proxy_config, watch_config
from topology.load import ConfigError

MSA = """\
name: "api-gateway-msa"
service:
  - name: image
    instance:
      - "http://127.0.0.1:5000"
      - {url: "http://127.0.0.1:5001", weight: 3}
  - name: auth
    instance: ["http://127.0.0.1:8000"]
"""

MSA_WITH_VIDEO = (
    MSA
    + """\
  - name: video
    instance: ["http://127.0.0.1:5002"]
    limits: {max_in_flight: 7}
"""
)

RS = """\
cur_region_code: ko_KR
regions:
  - region_code: ko_KR
    available_zone: ["http://127.0.0.1:9000"]
  - region_code: en_US
    available_zone: ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
"""

CONFIG = '{"Config_check_interval": 5, "Load_balancer_policy": "p2c", "Auth_key": "k"}'

GOOD = {"msa": MSA, "rs": RS, "config": CONFIG}
POLL_S = 5.0


@pytest.fixture
def paths(tmp_path: Path) -> ProxyPaths:
    p = ProxyPaths(msa=tmp_path / "msa.yaml", rs=tmp_path / "rs.yaml", config=tmp_path / "c.json")
    p.msa.write_text(MSA)
    p.rs.write_text(RS)
    p.config.write_text(CONFIG)
    return p


def rewrite(path: Path, text: str | bytes) -> None:
    """Replace a file's content and move its mtime a second on, as an editor would."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    stamp = before + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


# -- loading ----------------------------------------------------------------------------------
def test_load_proxy_config_reads_all_three_files(paths: ProxyPaths) -> None:
    config = load_proxy_config(paths)
    assert config.region == "ko_KR"
    assert list(config.services) == ["image", "auth"]
    assert [(i.url, i.weight) for i in config.services["image"].instances()] == [
        ("http://127.0.0.1:5000", 1),
        ("http://127.0.0.1:5001", 3),
    ]
    assert config.regions == {
        "ko_KR": ["http://127.0.0.1:9000"],
        "en_US": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"],
    }
    assert config.gateway.load_balancer_policy == "p2c"
    assert config.gateway.config_check_interval_s == 5
    assert config.msa.name == "api-gateway-msa"
    assert config.summary() == {
        "region": "ko_KR",
        "services": {
            "image": ["http://127.0.0.1:5000", "http://127.0.0.1:5001"],
            "auth": ["http://127.0.0.1:8000"],
        },
        "regions": config.regions,
        "policy": "p2c",
    }


def test_the_originals_files_load(tmp_path: Path) -> None:
    data = Path(__file__).parent.parent / "topology" / "data"
    config = load_proxy_config(
        ProxyPaths(msa=data / "msa_kr.yaml", rs=data / "rs_kr.yaml", config=data / "config.json")
    )
    assert config.region == "ko_KR"
    assert set(config.services) == {"image", "video", "auth"}
    assert set(config.regions) == {"ko_KR", "en_US"}


@pytest.mark.parametrize(
    ("which", "text", "where"),
    [
        ("msa", "service: [{name: image, instance: [5]}]", "$.service[0].instance[0]"),
        ("msa", "service: [{name: image, instanse: []}]", "instanse"),
        ("rs", "cur_region_code: xx_XX\nregions: []\n", "$.cur_region_code"),
        ("config", '{"Load_balancer_policy": "fastest"}', "$.Load_balancer_policy"),
        ("config", "{not json", "not valid json"),
    ],
)
def test_a_broken_file_fails_with_its_name_and_the_field(
    paths: ProxyPaths, which: str, text: str, where: str
) -> None:
    path: Path = getattr(paths, which)
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_proxy_config(paths)
    assert path.name in str(info.value)
    assert where in str(info.value)


def test_a_missing_file_is_a_config_error(paths: ProxyPaths) -> None:
    paths.rs.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        load_proxy_config(paths)


# -- reloading --------------------------------------------------------------------------------
class Applied:
    def __init__(self) -> None:
        self.configs: list[ProxyConfig] = []
        self.at: list[float] = []

    def __call__(self, config: ProxyConfig) -> None:
        self.configs.append(config)
        self.at.append(trio.current_time())


async def test_watch_config_applies_a_changed_file_at_the_next_poll(
    paths: ProxyPaths, autojump_clock: trio.testing.MockClock
) -> None:
    applied = Applied()
    async with trio.open_nursery() as nursery:
        await nursery.start(watch_config, paths, applied, lambda: POLL_S)
        start = trio.current_time()
        await trio.sleep(POLL_S * 3 + 1)
        assert applied.configs == []  # nothing changed: nothing applied

        rewrite(paths.msa, MSA_WITH_VIDEO)
        await trio.sleep(POLL_S)
        assert len(applied.configs) == 1
        assert applied.at == [start + POLL_S * 4]
        assert set(applied.configs[0].services) == {"image", "auth", "video"}
        assert applied.configs[0].services["video"].limits.max_in_flight == 7

        rewrite(paths.config, '{"Load_balancer_policy": "least_conn"}')
        await trio.sleep(POLL_S)
        assert len(applied.configs) == 2
        assert applied.configs[1].gateway.load_balancer_policy == "least_conn"
        assert set(applied.configs[1].services) == {"image", "auth", "video"}

        await trio.sleep(POLL_S * 3)
        assert len(applied.configs) == 2  # applied once per change, not per poll
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("which", "broken"),
    [
        ("msa", "service: [\n"),  # half-written YAML
        ("msa", b"\x00\x01garbage"),
        ("msa", "service: [{name: admin, instance: []}]"),  # reserved name
        ("rs", "cur_region_code: ko_KR\nregions: []\n"),
        ("config", '{"Cache_or_not": tru'),
        ("config", ""),
    ],
)
async def test_watch_config_keeps_the_old_config_when_the_new_file_is_broken(
    paths: ProxyPaths, autojump_clock: trio.testing.MockClock, which: str, broken: str | bytes
) -> None:
    applied = Applied()
    path: Path = getattr(paths, which)
    good = GOOD[which]
    async with trio.open_nursery() as nursery:
        await nursery.start(watch_config, paths, applied, lambda: POLL_S)
        rewrite(path, broken)
        await trio.sleep(POLL_S * 2 + 1)
        assert applied.configs == []  # refused, the watcher still runs

        rewrite(path, good)
        await trio.sleep(POLL_S)
        assert len(applied.configs) == 1
        assert applied.configs[0] == load_proxy_config(paths)
        nursery.cancel_scope.cancel()


async def test_watch_config_survives_a_file_that_disappears_and_comes_back(
    paths: ProxyPaths, autojump_clock: trio.testing.MockClock
) -> None:
    applied = Applied()
    async with trio.open_nursery() as nursery:
        await nursery.start(watch_config, paths, applied, lambda: POLL_S)
        paths.msa.unlink()
        await trio.sleep(POLL_S + 1)
        assert applied.configs == []
        rewrite(paths.msa, MSA_WITH_VIDEO)
        await trio.sleep(POLL_S)
        assert len(applied.configs) == 1
        assert "video" in applied.configs[0].services
        nursery.cancel_scope.cancel()


async def test_watch_config_reads_the_interval_before_each_poll(
    paths: ProxyPaths, autojump_clock: trio.testing.MockClock
) -> None:
    # A reload may change Config_check_interval; the next wait uses the new value.
    intervals = iter([10.0, 1.0, 1.0, 1.0, 1.0])
    applied = Applied()
    async with trio.open_nursery() as nursery:
        await nursery.start(watch_config, paths, applied, lambda: next(intervals))
        start = trio.current_time()
        await trio.sleep(10.5)
        rewrite(paths.msa, MSA_WITH_VIDEO)
        await trio.sleep(1)
        assert applied.at == [start + 11.0]
        nursery.cancel_scope.cancel()


def test_a_database_password_is_not_shown() -> None:
    from proxy.state import REDACTED, redacted_dsn

    assert redacted_dsn("postgresql://gw:s3cr%40t@db:5432/gw?sslmode=require") == (
        f"postgresql://gw:{REDACTED}@db:5432/gw?sslmode=require"
    )
    assert redacted_dsn("host=db user=gw password='a b' dbname=gw") == (
        f"host=db user=gw password={REDACTED} dbname=gw"
    )
    assert redacted_dsn("host=db password=plain") == f"host=db password={REDACTED}"
    assert redacted_dsn("postgresql://gw@db/gw") == "postgresql://gw@db/gw"
    assert redacted_dsn("auth.sqlite3") == "auth.sqlite3"


def test_admin_config_shows_auth_store_without_its_password() -> None:
    from proxy.state import ProxyConfig, redacted_config
    from topology.schema import GatewayConfig, MsaFile, RegionStructure

    gateway = msgspec.convert({"Auth_store": "postgresql://gw:hunter2@db/gw"}, GatewayConfig)
    config = ProxyConfig(
        msa=MsaFile(service=[]),
        rs=RegionStructure(cur_region_code="ko_KR", regions=[]),
        gateway=gateway,
        region="ko_KR",
        services={},
        regions={},
    )
    shown = redacted_config(config)
    assert "hunter2" not in msgspec.json.encode(shown).decode()
