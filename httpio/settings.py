"""The typed, frozen settings of the modules `httpio.accel` compiles: the listening server's
limits, the upstream pool's timeouts, one service's health rules, concurrency limits and
timeouts (`httpio.limits` says what each means), and retry budget.

They live in a module of their own, which is never compiled, because mypyc drops a class's
keywords when it builds a class with a non-native base: a ``msgspec.Struct`` declared
``frozen=True, forbid_unknown_fields=True`` in a compiled module would come out mutable and
silently accept misspelt keys (seen with mypy 2.4's mypyc; `httpio.accel_build.check_sources`
refuses such a class in a compiled module). Their modules import them from here.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

Seconds = Annotated[float, Meta(gt=0)]
DEFAULT_PER_TRY_TIMEOUT_S = 2.0  # see httpio.limits' header


class ServerLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Limits of one listening server. Defaults follow common proxy practice: nginx's
    large_client_header_buffers (4 x 8k) sits near 16 KiB, its keepalive_timeout is 75 s;
    we choose shorter idle times because idle connections cost memory on a 2-core box.

    A request body is bounded three ways, and each counts only the time spent waiting for
    the client's bytes (not the handler's work, nor an upstream slow to take them):
    ``body_timeout_s`` between two reads (nginx's ``client_body_timeout``, per read); a
    minimum rate, Apache ``mod_reqtimeout``'s model (``body=20,MinRate=500``): once
    ``body_rate_grace_s`` have gone by, each ``min_body_rate_bytes_per_s`` bytes received
    buys one more second (0 switches the rate off); and ``body_deadline_s`` for the whole
    body, as HAProxy's ``timeout http-request`` bounds a whole request. A body trickling a
    byte every few seconds so held a service's in-flight slots for as long as it liked.
    1 KiB/s is 8 kbit/s, below any link a real upload uses, after 10 s of grace for a
    client that starts slowly; 300 s lets a 1 GiB body (``max_body_bytes``) in at 3.6 MB/s,
    and a deployment taking larger uploads on slower links raises it."""

    max_head_bytes: int = 16384
    max_body_bytes: int = 1 << 30
    head_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    body_timeout_s: float = 30.0
    body_deadline_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    min_body_rate_bytes_per_s: Annotated[int, msgspec.Meta(ge=0)] = 1024
    body_rate_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    send_timeout_s: float = 30.0
    max_connections: int = 20000
    drain_timeout_s: float = 10.0


class UpstreamTimeouts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    connect_timeout_s: float = 1.0
    response_head_timeout_s: float = 30.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 20.0
    max_idle_per_origin: int = 256


class HealthSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str = "/health"
    interval_s: Seconds | None = None  # None -> config.json MSA_healthcheck_interval
    timeout_s: Seconds = 1.0
    rise: Annotated[int, Meta(ge=1)] = 2
    fall: Annotated[int, Meta(ge=1)] = 3
    consecutive_failures: Annotated[int, Meta(ge=1)] = 5  # Envoy's consecutive_5xx
    consecutive_gateway_failures: Annotated[int, Meta(ge=1)] = 3  # ... consecutive_gateway_failure
    recently_failed_s: Seconds = 5.0  # a retry avoids an instance that failed this recently
    base_ejection_s: Seconds = 10.0
    max_ejection_s: Seconds = 300.0
    max_ejection_percent: Annotated[int, Meta(ge=0, le=100)] = 50
    panic: bool = True  # no instance usable -> spread over all of them rather than answer 503

    def effective_interval_s(self, default_s: float) -> float:
        return default_s if self.interval_s is None else self.interval_s


class ServiceLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_in_flight: Annotated[int, Meta(ge=1)] = 1024
    # Connects in progress at once; as high as max_in_flight by default (Envoy's 1024): a
    # burst of 1,000 new clients (make concurrent) must not be refused by this one.
    max_pending: Annotated[int, Meta(ge=0)] = 1024
    connect_timeout_s: Annotated[float, Meta(gt=0)] = 1.0
    # See the module header. None: DEFAULT_PER_TRY_TIMEOUT_S, or response_timeout_s if set.
    per_try_timeout_s: Annotated[float, Meta(gt=0)] | None = None
    response_timeout_s: Annotated[float, Meta(gt=0)] | None = None  # over all tries; None: none
    retries: Annotated[int, Meta(ge=0)] = 1

    def response_head_timeout_s(self) -> float:
        """How long one try may wait for its response head (see the module header)."""
        if self.per_try_timeout_s is not None:
            return self.per_try_timeout_s
        if self.response_timeout_s is not None:
            return self.response_timeout_s
        return DEFAULT_PER_TRY_TIMEOUT_S


class RetryBudgetSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ratio: Annotated[float, Meta(ge=0)] = 0.2
    min_retries_per_s: Annotated[float, Meta(ge=0)] = 3.0
    window_s: Annotated[float, Meta(gt=0)] = 10.0
