"""Which of a region's proxies take new connections: the ELB's health rules, sans-IO.

The ELB used to eject a proxy on one missed 0.5 s probe and could eject all of them: 3,000
idle connections kept both proxies of a region busy writing 408s, both missed a probe, and
for ~5 s every client got 503. A probe miss is weak evidence (the proxy may only be busy,
and the proxies of one region get busy together); a closed hand-off link or a refused connect
is strong evidence (nothing is there). So, as HAProxy separates ``check`` from ``observe
layer4`` and Envoy active health checks from outlier detection:

- *hard* evidence (`Evidence.GONE`: the proxy closed its hand-off link, a relay connect was
  refused, a hand-off ``sendmsg`` failed) marks the proxy ``DOWN`` at once, with no cap: a
  proxy that dies stops getting connections at once;
- *soft* evidence (``PROBE_FAILED``: a ``GET /health`` missed, a relay connect timed out)
  counts; ``fall`` misses in a row make the proxy ``FAILING``; ``rise`` passed probes in a row
  bring a ``FAILING`` or ``DOWN`` proxy back (HAProxy's rise/fall). At 0.5 s per probe and
  fall 3 a proxy that stopped answering is out within ~1.5 s;
- a ``FAILING`` proxy is out only while at most ``max_ejection_percent`` of the region is out
  (``DOWN`` ones included), but one may always go: Envoy's outlier-detection rule (its
  default is 10 %; ours is `HealthSettings`' 50 %, which for the two proxies of a region
  means the same: one). The rest stay in rotation, *held*; the first to fail goes first;
- panic: when nothing is usable, every proxy is (Envoy's ``healthy_panic_threshold``, here
  at 0 %): a maybe-sick proxy beats a certain 503. A proxy that really is gone then costs a
  refused connect and the client is given to the next one.

`ProxyHealth` keeps one record per proxy; the transitions sit in ``TRANSITIONS``; the usable
set is recomputed only when a verdict changes, so the ELB's per-connection pick reads a
ready list. ``httpio.health.HealthTracker`` is not used because its active-check ejections
have no cap (by design: a proxy's backends are many and independent; a region's proxies
are few and fail together). Only ``rise``, ``fall``, ``max_ejection_percent`` and ``panic``
of the `HealthSettings` are read here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from httpio.settings import HealthSettings


class Verdict(enum.Enum):
    UP = "up"
    FAILING = "failing"  # fall probes missed: out if the cap allows, else held
    DOWN = "down"  # hard evidence: out


class Evidence(enum.Enum):
    PROBE_PASSED = "probe_passed"
    PROBE_FAILED = "probe_failed"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class Change:
    key: str
    old: Verdict
    new: Verdict
    evidence: Evidence


class _Record:
    __slots__ = ("failing_since", "falls", "misses", "passes", "verdict")

    def __init__(self) -> None:
        self.verdict = Verdict.UP
        self.passes = 0
        self.misses = 0
        self.failing_since = 0  # order in which proxies went FAILING: the first goes first
        self.falls = 0  # times it left UP


Guard = Callable[[HealthSettings, _Record], bool]


def _always(s: HealthSettings, r: _Record) -> bool:
    return True


def _fall_reached(s: HealthSettings, r: _Record) -> bool:
    return r.misses >= s.fall


def _rise_reached(s: HealthSettings, r: _Record) -> bool:
    return r.passes >= s.rise


U, F, D = Verdict.UP, Verdict.FAILING, Verdict.DOWN

# (verdict, evidence) -> (guard, new verdict). A missing pair means "no change". Counters
# are updated (in `_count`) before the table is consulted.
TRANSITIONS: Final[dict[tuple[Verdict, Evidence], tuple[Guard, Verdict]]] = {
    (U, Evidence.PROBE_FAILED): (_fall_reached, F),
    (U, Evidence.GONE): (_always, D),
    (F, Evidence.PROBE_PASSED): (_rise_reached, U),
    (F, Evidence.GONE): (_always, D),
    (D, Evidence.PROBE_PASSED): (_rise_reached, U),
}


def _count(r: _Record, evidence: Evidence) -> None:
    if evidence is Evidence.PROBE_PASSED:
        r.passes += 1
        r.misses = 0
    elif evidence is Evidence.PROBE_FAILED:
        r.misses += 1
        r.passes = 0
    else:
        r.passes = 0


class ProxyHealth:
    """The verdict on each proxy of one region, keyed by URL, and the usable set."""

    def __init__(self, settings: HealthSettings, keys: Iterable[str]) -> None:
        self.settings = settings
        self._records = {key: _Record() for key in keys}
        self._failing_seq = 0
        self.usable: tuple[str, ...] = tuple(self._records)
        self.held: tuple[str, ...] = ()
        self.panicking = False
        self.panics = 0

    def __repr__(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in self.counts().items() if v)
        panic = " PANIC" if self.panicking else ""
        return f"<ProxyHealth {counts or 'empty'} usable={len(self.usable)}{panic}>"

    def verdict(self, key: str) -> Verdict:
        return self._records[key].verdict

    def observe(self, key: str, evidence: Evidence) -> Change | None:
        """Feed one piece of evidence; the verdict change it caused, if any."""
        r = self._records.get(key)
        if r is None:
            return None
        _count(r, evidence)
        rule = TRANSITIONS.get((r.verdict, evidence))
        if rule is None or not rule[0](self.settings, r):
            return None
        old, r.verdict = r.verdict, rule[1]
        if r.verdict is F:
            self._failing_seq += 1
            r.failing_since = self._failing_seq
        if old is U:
            r.falls += 1
        self._recompute()
        return Change(key, old, r.verdict, evidence)

    def _recompute(self) -> None:
        total = len(self._records)
        out = {k for k, r in self._records.items() if r.verdict is D}
        failing = sorted((r.failing_since, k) for k, r in self._records.items() if r.verdict is F)
        held = []
        for _, key in failing:
            if not out or (len(out) + 1) * 100 <= self.settings.max_ejection_percent * total:
                out.add(key)
            else:
                held.append(key)
        self.held = tuple(held)
        usable = tuple(k for k in self._records if k not in out)
        was_panicking = self.panicking
        self.panicking = not usable and total > 0 and self.settings.panic
        if self.panicking:
            usable = tuple(self._records)
            self.panics += not was_panicking
        self.usable = usable

    def counts(self) -> dict[str, int]:
        counts = {v.value: 0 for v in Verdict}
        for r in self._records.values():
            counts[r.verdict.value] += 1
        return counts

    def statistics(self) -> dict[str, object]:
        return {
            "usable": list(self.usable),
            "held": list(self.held),
            "panicking": self.panicking,
            "panics": self.panics,
            "proxies": {
                key: {
                    "verdict": r.verdict.value,
                    "passes": r.passes,
                    "misses": r.misses,
                    "falls": r.falls,
                }
                for key, r in self._records.items()
            },
        }
