"""The original's ``benchmark/request.sh`` as data: each "Right" and "Wrong" request of its
qualitative tests, made as the script made it, next to the status line its README printed.

The script (the original repository's last version; it is not among our seeds) signs five
users up with httpie (``http -h POST localhost:9000/auth/signup username=Quavo
password=stirfry role=mumble | head -n 1``), signs them in, then asks with curl (``curl -si
--header "AuthToken:$(http POST localhost:9000/auth/signin username=XXXtentacion
password=makeouthill666)" --header "Accept-Language: en_US" http://localhost:9000/sound/test.css
| head -n 1``) and prints the first line of each answer. So:

- a signup or signin is httpie's: a JSON object of the ``key=value`` arguments, all strings,
  with ``Content-Type: application/json``;
- ``AuthToken:`` holds the *whole* body that the sign-in printed, written as curl writes a
  ``--header`` given without a space after the colon;
- the region is an ``Accept-Language`` region code (``ko_KR``, ``en_US``, ``de_EU``);
- ``localhost:9000`` is the ko_KR ELB, ``localhost:9001`` the en_US one, ``localhost:6000``
  the first ko_KR proxy (one sign-in of the script goes straight there).

`make_request` writes those bytes itself on a socket (``Host: localhost:<port>``) instead of
running httpie and curl, which the original installed and we do not need. Each check carries
the answers we accept besides the original's: 201 Created for a signup (RFC 9110 15.3.2: a
user was created) and 401 for a request with no token (RFC 6750 3.1; the original said 400).
Anything else is a regression and `verdict` says so.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Where = Literal["kr", "en", "proxy"]
REQUEST_TIMEOUT_S = 30.0
CURL_AGENT = "curl/7.47.0"  # Ubuntu 16.04's, the original's machine
HTTPIE_AGENT = "HTTPie/0.9.2"

# The script's users (its benchmark/password.txt) and where it signed each up.
USERS: tuple[tuple[Where, str, str, str], ...] = (
    ("kr", "Quavo", "stirfry", "mumble"),
    ("kr", "XXXtentacion", "makeouthill666", "rapper"),
    ("en", "alpha", "beta", "gamma"),
    ("en", "Haskell", "curry", "language"),
    ("kr", "lilpump", "guccigang", "rapper"),
)
TOKEN_USER = ("XXXtentacion", "makeouthill666")  # every token of the script is this user's


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The script's three addresses, in a fleet of ours."""

    kr_elb: str  # localhost:9000
    en_elb: str  # localhost:9001
    kr_proxy: str  # localhost:6000

    def origin(self, where: Where) -> str:
        return {"kr": self.kr_elb, "en": self.en_elb, "proxy": self.kr_proxy}[where]


@dataclass(frozen=True, slots=True)
class Check:
    """One request of the script and the status line the original answered."""

    section: str
    label: str  # the script's printf before the status line ("" for none)
    where: Where
    path: str
    expected: str
    fields: tuple[tuple[str, str], ...] = ()  # httpie POST: key=value
    token_from: Where | None = None  # curl: AuthToken:$(http POST <where>/auth/signin ...)
    token_text: str | None = None  # curl: AuthToken:<this>
    language: str | None = None  # curl: Accept-Language
    also_accepted: tuple[int, ...] = ()

    @property
    def is_httpie(self) -> bool:
        return bool(self.fields)


def _signup(where: Where, name: str, password: str, role: str) -> Check:
    fields = (("username", name), ("password", password), ("role", role))
    return Check(
        "signup", "", where, "/auth/signup", "HTTP/1.1 200 OK", fields, also_accepted=(201,)
    )


def _signin(label: str, where: Where, name: str, password: str, expected: str) -> Check:
    fields = (("username", name), ("password", password))
    return Check("signin", label, where, "/auth/signin", expected, fields)


def _curl(
    section: str,
    label: str,
    where: Where,
    path: str,
    expected: str,
    *,
    language: str | None = None,
    token_from: Where | None = None,
    token_text: str | None = None,
    also_accepted: tuple[int, ...] = (),
) -> Check:
    return Check(
        section,
        label,
        where,
        path,
        expected,
        token_from=token_from,
        token_text=token_text,
        language=language,
        also_accepted=also_accepted,
    )


OK = "HTTP/1.1 200 OK"
UNAUTHORIZED = "HTTP/1.1 401 Unauthorized"
NOT_FOUND = "HTTP/1.1 404 Not Found"
BAD_REQUEST = "HTTP/1.1 400 Bad Request"

CHECKS: tuple[Check, ...] = (
    *(_signup(where, name, password, role) for where, name, password, role in USERS),
    *(_signin("", where, name, password, OK) for where, name, password, _ in USERS),
    _signin("Wrong id and pw : ", "en", "samsung", "electronics", UNAUTHORIZED),
    _signin("Wrong pw : ", "kr", "Haskell", "Carey", UNAUTHORIZED),
    _signin("Wrong id : ", "en", "beta", "beta", UNAUTHORIZED),
    _curl(
        "regional", "Request without region code : ", "kr", "/video/test.css", OK, token_from="kr"
    ),
    _curl(
        "regional",
        "Request for kr region code and service only in kr at en region : ",
        "en",
        "/image/test.css",
        OK,
        language="ko_KR",
        token_from="en",
    ),
    _curl(
        "regional",
        "Request for en region code and service only in en at kr region : ",
        "kr",
        "/sound/test.css",
        OK,
        language="en_US",
        token_from="kr",
    ),
    _curl(
        "regional",
        "Request for service only in kr : ",
        "kr",
        "/image/test.css",
        OK,
        language="ko_KR",
        token_from="kr",
    ),
    _curl(
        "regional",
        "Request for service only in en : ",
        "en",
        "/sound/test.css",
        OK,
        language="en_US",
        token_from="en",
    ),
    _curl(
        "regional",
        "Request for nonexistent region code : ",
        "kr",
        "/video/test.css",
        NOT_FOUND,
        language="de_EU",
        token_from="kr",
    ),
    _curl(
        "regional",
        "Request for service nonexistent in kr : ",
        "kr",
        "/sound/test.css",
        NOT_FOUND,
        language="ko_KR",
        token_from="kr",
    ),
    _curl(
        "regional",
        "Request for service nonexistent in en : ",
        "en",
        "/image/test.css",
        NOT_FOUND,
        language="en_US",
        token_from="en",
    ),
    _curl("regular", "", "kr", "/video/test.css", OK, token_from="kr"),
    _curl("regular", "", "kr", "/image/index.html", OK, token_from="kr"),
    _curl("regular", "", "en", "/sound/index.html", OK, token_from="en"),
    _curl(
        "regular",
        "Request with region code header : ",
        "kr",
        "/video/test.css",
        OK,
        language="ko_KR",
        token_from="kr",
    ),
    _curl(
        "regular",
        "Request for nonexistent resource : ",
        "kr",
        "/image/test.hs",
        NOT_FOUND,
        language="ko_KR",
        token_from="kr",
    ),
    _curl(
        "regular",
        "Request for nonexistent resource in other service : ",
        "kr",
        "/video/test.hs",
        NOT_FOUND,
        language="ko_KR",
        token_from="kr",
    ),
    _curl(
        "regular",
        "Request with wrong auth token : ",
        "kr",
        "/video/test.hs",
        BAD_REQUEST,
        language="ko_KR",
        token_text="{nice:2222}",
    ),
    _curl(
        "regular",
        "Request without auth token header : ",
        "kr",
        "/video/test.hs",
        BAD_REQUEST,
        also_accepted=(401,),
    ),
)

# The script's sections in its order: title, sub-headings by the index of the check they
# come before, and the load (a `bench.run` scenario) that ends the section.
SECTIONS: dict[str, tuple[str, dict[int, str], str | None]] = {
    "signup": ("Signup beforehand", {}, None),
    "signin": (
        "Signin request test",
        {0: " * Right : Request for every signed up id/pw", 5: " * Wrong : "},
        "signin",
    ),
    "regional": ("Regional request test", {0: " * Right :", 5: " * Wrong : "}, "region"),
    "regular": (
        "Regular request test",
        {0: " * Right : Request for every service", 4: " * Wrong : "},
        "regular",
    ),
    "concurrent": ("Concurrent request test", {}, "concurrent"),
    "image": ("Image request test", {}, "image"),
    "large": ("Large request test", {}, "large"),
}
# Whose sign-in body each load sends: the script's went through the ko_KR ELB, but the
# image load's through the first proxy.
LOAD_TOKEN_FROM: dict[str, Where] = {
    "region": "kr",
    "regular": "kr",
    "concurrent": "kr",
    "image": "proxy",
    "large": "kr",
}


def checks_of(section: str) -> list[Check]:
    return [c for c in CHECKS if c.section == section]


# -- the requests, byte for byte ---------------------------------------------------------------
def _host_port(origin: str) -> tuple[str, int]:
    host, port = origin.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def httpie_request(origin: str, path: str, fields: Sequence[tuple[str, str]]) -> bytes:
    """What ``http POST localhost:<port><path> k=v ...`` sends: a JSON object of strings."""
    body = json.dumps(dict(fields)).encode()
    _, port = _host_port(origin)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: {HTTPIE_AGENT}\r\n"
        "Accept-Encoding: gzip, deflate\r\nAccept: application/json, */*\r\n"
        "Connection: keep-alive\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def curl_request(origin: str, path: str, token: str | None, language: str | None) -> bytes:
    """What ``curl -si --header "AuthToken:<token>" --header "Accept-Language: <code>"``
    sends: curl's own three headers, then the given ones as written."""
    _, port = _host_port(origin)
    head = f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: {CURL_AGENT}\r\nAccept: */*\r\n"
    if token is not None:
        head += f"AuthToken:{token}\r\n"
    if language is not None:
        head += f"Accept-Language: {language}\r\n"
    return (head + "\r\n").encode("utf-8")


@dataclass(frozen=True, slots=True)
class Answer:
    version: int  # 10 or 11, as http.client has it
    status: int
    reason: str
    body: bytes

    @property
    def status_line(self) -> str:
        return f"HTTP/{'1.1' if self.version == 11 else '1.0'} {self.status} {self.reason}"


def send(origin: str, raw: bytes, *, source: str | None = None) -> Answer:
    """Send ``raw`` on a new connection and read the one answer."""
    host, port = _host_port(origin)
    address = (source, 0) if source else None
    with socket.create_connection((host, port), REQUEST_TIMEOUT_S, source_address=address) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
    return Answer(response.version, response.status, response.reason, body)


def sign_in_body(endpoints: Endpoints, where: Where, *, source: str | None = None) -> str:
    """``$(http POST <where>/auth/signin username=XXXtentacion password=...)``: the whole body,
    less the trailing newlines the shell's command substitution drops."""
    name, password = TOKEN_USER
    raw = httpie_request(
        endpoints.origin(where), "/auth/signin", (("username", name), ("password", password))
    )
    return send(endpoints.origin(where), raw, source=source).body.decode("utf-8").rstrip("\n")


def make_request(check: Check, endpoints: Endpoints, *, source: str | None = None) -> Answer:
    origin = endpoints.origin(check.where)
    if check.is_httpie:
        return send(origin, httpie_request(origin, check.path, check.fields), source=source)
    token = check.token_text
    if check.token_from is not None:
        token = sign_in_body(endpoints, check.token_from, source=source)
    return send(origin, curl_request(origin, check.path, token, check.language), source=source)


# -- what we print -----------------------------------------------------------------------------
def verdict(check: Check, answer: Answer) -> str:
    """``same`` as the original, ``better`` (an answer the module header lists), or ``WORSE``."""
    if answer.status_line == check.expected:
        return "same"
    return "better" if answer.status in check.also_accepted else "WORSE"


@dataclass(frozen=True, slots=True)
class Outcome:
    check: Check
    answer: Answer

    @property
    def verdict(self) -> str:
        return verdict(self.check, self.answer)

    def line(self, width: int = 82) -> str:
        ours = f"{self.check.label}{self.answer.status_line}"
        return f"{ours:<{width}}  | original: {self.check.expected} ({self.verdict})"


def run_checks(
    section: str,
    endpoints: Endpoints,
    out: Callable[[str], None],
    *,
    source: str | None = None,
) -> list[Outcome]:
    """Make a section's requests in the script's order, printing each line as it comes."""
    headings = SECTIONS[section][1]
    outcomes = []
    for number, check in enumerate(checks_of(section)):
        if number in headings:
            out(headings[number])
        outcome = Outcome(check, make_request(check, endpoints, source=source))
        out(outcome.line())
        outcomes.append(outcome)
    return outcomes


ESSENTIAL = ("Complete", "Failed", "Time per", "Transfer", "longest")  # the script's grep


def essential_lines(ab_stdout: str) -> list[str]:
    """The lines of ``ab -q`` output the script kept (``grep "Complete\\|Failed\\|..."``)."""
    return [line for line in ab_stdout.splitlines() if any(word in line for word in ESSENTIAL)]
