"""``request_headers`` / ``response_headers``: a service's ``set``, ``add`` and ``remove`` rules.

Names are checked at load (RFC 9110 tokens, no ``_``, which the forward drops anyway). Values
are templates compiled once per snapshot: ``${client_ip}``, ``${request_id}``, ``${user}``
(empty for an anonymous request) and ``${region}``; any other ``${...}`` is a load error,
as is a value with a control character (header injection). Order: remove, then set (which
replaces every copy), then add.

The request rules run after auth, so ``${user}`` is the verified one, and they edit the
client's headers: the forward filter still drops identity and hop headers a rule might name
(``X-User``), so a rule cannot forge what the gateway vouches for. The response rules sit just
before the cache in the list: on the way back they see (and may override) what
``response_headers`` wrote, and they run for every answer, a cache hit included, so a value
rendered for one client (``${client_ip}``, ``${user}``) is never stored and served to another.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from httpio.messages import Response
from httpio.protocol import Headers
from proxy.filters.auth import client_address
from proxy.filters.chain import Exchange, RequestAnswer
from topology.schema import HeaderRules

VARIABLES = ("client_ip", "request_id", "user", "region")
_VAR = re.compile(r"\$\{([^}]*)\}")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
Part = str | Callable[[Exchange], str]


def compile_value(value: str, region: str) -> tuple[Part, ...]:
    """Raises ValueError for an unknown variable or a control character."""
    if _BAD_VALUE.search(value):
        raise ValueError(f"header value {value!r} holds a control character")
    parts: list[Part] = []
    pos = 0
    for m in _VAR.finditer(value):
        if m.start() > pos:
            parts.append(value[pos : m.start()])
        var = m.group(1)
        if var == "client_ip":
            parts.append(client_address)
        elif var == "request_id":
            parts.append(lambda ex: ex.request_id.decode("latin-1"))
        elif var == "user":
            parts.append(lambda ex: ex.claims.sub if ex.claims is not None else "")
        elif var == "region":
            parts.append(region)
        else:
            raise ValueError(f"unknown variable ${{{var}}} (known: {', '.join(VARIABLES)})")
        pos = m.end()
    if pos < len(value):
        parts.append(value[pos:])
    return tuple(parts)


def render(parts: tuple[Part, ...], ex: Exchange) -> bytes:
    return "".join(p if isinstance(p, str) else p(ex) for p in parts).encode("latin-1", "replace")


Renderer = Callable[[Exchange], bytes]
Value = bytes | Renderer  # bytes: a value with no per-request variable, encoded once


def compile_rule(value: str, region: str) -> Value:
    """A value's bytes when it has no per-request variable, else what renders it: one
    variable alone is encoded as it comes, without a join (``${client_ip}``, the usual)."""
    parts: list[Part] = []
    for part in compile_value(value, region):  # neighbouring text (``${region}`` is) as one
        if isinstance(part, str) and parts and isinstance(parts[-1], str):
            parts[-1] += part
        else:
            parts.append(part)
    if all(isinstance(p, str) for p in parts):
        return "".join(p for p in parts if isinstance(p, str)).encode("latin-1", "replace")
    if len(parts) == 1:
        variable = parts[0]
        assert not isinstance(variable, str)

        def one(ex: Exchange) -> bytes:
            return variable(ex).encode("latin-1", "replace")

        return one
    every = tuple(parts)

    def joined(ex: Exchange) -> bytes:
        return render(every, ex)

    return joined


@dataclass(frozen=True, slots=True)
class CompiledRules:
    """The rules of one snapshot, with what can be done once done once: the names to drop
    (removed or replaced) as one set, the lines to append (set's, then add's) with constant
    values already encoded, and when all of them are constant, those lines as they go."""

    drop: frozenset[bytes]
    append: tuple[tuple[bytes, Value], ...]
    constant: tuple[tuple[bytes, bytes], ...] | None

    @classmethod
    def of(cls, rules: HeaderRules, region: str) -> CompiledRules:
        set_ = tuple((n.lower().encode(), compile_rule(v, region)) for n, v in rules.set.items())
        add = tuple((n.lower().encode(), compile_rule(v, region)) for n, v in rules.add.items())
        append = set_ + add
        constant = tuple((n, v) for n, v in append if isinstance(v, bytes))
        return cls(
            frozenset(n.lower().encode() for n in rules.remove) | {n for n, _ in set_},
            append,
            constant if len(constant) == len(append) else None,
        )

    def apply(self, headers: Headers, ex: Exchange) -> Headers:
        drop = self.drop
        out = [h for h in headers if h[0] not in drop] if drop else list(headers)
        if self.constant is not None:
            out += self.constant
            return out
        for n, v in self.append:
            out.append((n, v if isinstance(v, bytes) else v(ex)))
        return out


def rules_settings(rules: HeaderRules) -> dict[str, object]:
    return {"set": dict(rules.set), "add": dict(rules.add), "remove": list(rules.remove)}


class RequestHeaderRules:
    name = "request_headers"

    def __init__(self, rules: HeaderRules, region: str) -> None:
        self.rules = rules
        self._compiled = CompiledRules.of(rules, region)

    def __repr__(self) -> str:
        return f"<RequestHeaderRules {self.rules}>"

    def settings(self) -> dict[str, object]:
        return rules_settings(self.rules)

    def on_request(self, ex: Exchange) -> RequestAnswer:
        ex.request.headers = self._compiled.apply(ex.request.headers, ex)
        return None


class ResponseHeaderRules:
    name = "response_header_rules"

    def __init__(self, rules: HeaderRules, region: str) -> None:
        self.rules = rules
        self._compiled = CompiledRules.of(rules, region)

    def __repr__(self) -> str:
        return f"<ResponseHeaderRules {self.rules}>"

    def settings(self) -> dict[str, object]:
        return rules_settings(self.rules)

    def on_response(self, ex: Exchange, response: Response) -> Response:
        # A new Response, not an edit: the cache stores a streamed answer from the Response it
        # passed on when the body ends, and a value rendered for this client must not be stored.
        return Response(response.status, self._compiled.apply(response.headers, ex), response.body)
