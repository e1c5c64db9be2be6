"""The SQLite sink through a real proxy process: ``Access_log: {sqlite: PATH}``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.e2e.cluster import BIN, is_up, spawn
from tests.e2e.harness import request
from tests.support.polling import wait_for
from tests.support.ports import free_ports


def rows(path: Path) -> list[tuple[object, ...]]:
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT request_id, status, service, upstream FROM access").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def test_a_proxy_inserts_its_access_lines_into_sqlite(tmp_path: Path) -> None:
    backend, proxy, elb = free_ports(3)
    (tmp_path / "msa.yaml").write_text(
        f'service:\n  - name: web\n    public: true\n    instance: ["http://127.0.0.1:{backend}"]\n'
    )
    (tmp_path / "rs.yaml").write_text(
        "cur_region_code: ko_KR\nregions:\n  - region_code: ko_KR\n"
        f'    available_zone: ["http://127.0.0.1:{elb}"]\n'
    )
    (tmp_path / "config.json").write_text(
        json.dumps({"Auth_key": "k" * 32, "Access_log": {"sqlite": "access.sqlite3"}})
    )
    processes = [spawn([str(BIN / "backend"), str(backend)], tmp_path / "backend.log")]
    try:
        wait_for(lambda: is_up(backend), what="backend up")
        processes.append(
            spawn(
                [str(BIN / "proxy"), str(proxy)]
                + [str(tmp_path / n) for n in ("msa.yaml", "rs.yaml", "config.json")],
                tmp_path / "proxy.log",
            )
        )
        wait_for(lambda: is_up(proxy), what="proxy up")
        url = f"http://127.0.0.1:{proxy}"
        assert request(url, "/web/index.html", headers={"x-request-id": "sql-1"}).status == 200
        assert request(url, "/nope/x", headers={"x-request-id": "sql-2"}).status == 404
        database = tmp_path / "access.sqlite3"
        wait_for(lambda: len(rows(database)) == 2, what="two rows in the sink")
        assert sorted(rows(database)) == [
            ("sql-1", 200, "web", f"http://127.0.0.1:{backend}"),
            ("sql-2", 404, "-", "-"),
        ]
    finally:
        for p in processes:
            p.kill()
            p.wait(10)
