import json

from topology.report import format_report, percentile, summarise


def line(service: str, status: int, ms: float, **extra: object) -> str:
    doc = {"service": service, "status": status, "duration_ms": ms, "path": "/a?x=1"}
    doc.update(extra)
    return json.dumps(doc)


def test_summary_counts_classes_percentiles_cache_and_errors():
    lines = [line("image", 200, float(i), cache="HIT" if i % 2 else "MISS") for i in range(1, 101)]
    lines += [
        line("video", 401, 1.0, error="unauthorized"),
        line("video", 429, 1.0, rate_limited=True),
    ]
    lines += ["{torn", ""]
    report = summarise(lines)
    assert report.lines == 102 and report.unreadable == 1
    image = report.services["image"]
    assert image.classes["2xx"] == 100 and image.hits == 50
    assert report.hit_ratio() == 0.5
    assert percentile(sorted(image.durations_ms), 0.99) == 99.0
    assert report.rate_limited == 1 and report.errors["unauthorized"] == 1
    text = format_report(report)
    assert "cache hit ratio: 50.0 %" in text and "/a" in text and "x=1" not in text


def test_percentile_nearest_rank():
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([5.0], 0.99) == 5.0


def test_the_sqlite_sinks_database_is_summarised_too(tmp_path):
    from httpio.access_log import AccessLine
    from httpio.access_sqlite import SqliteAccessLog
    from topology.report import read_database

    sink = SqliteAccessLog(tmp_path / "access.sqlite3")
    for status in (200, 200, 503):
        sink.write(
            AccessLine(
                "t",
                "id",
                "-",
                "127.0.0.1",
                "GET",
                "/v/x",
                status,
                0,
                5,
                2.0,
                None,
                "video",
                "ko_KR",
                "-",
                "-",
                0,
                "-",
                "-",
                False,
                "-" if status == 200 else "no_healthy_instance",
                "ua",
            )
        )
    sink.close()
    report = summarise(read_database(tmp_path / "access.sqlite3"))
    assert report.services["video"].classes == {"2xx": 2, "5xx": 1}
    assert report.errors["no_healthy_instance"] == 1
