"""The auth server's own Prometheus series (served with the rest at ``/metrics``).

``authsvc_signins_total{result}``: ``ok``, or the JSON error kind of a refused sign-in
(``unauthorized``, ``too_many_requests``, ``dependency_unavailable``...): a handful of values.
"""

from __future__ import annotations

from prometheus_client import Counter

SIGNINS = Counter("authsvc_signins", "Sign-in attempts by their result", ["result"])


def count_signin(result: str) -> None:
    SIGNINS.labels(result).inc()
