"""The proxy's request path as an ordered chain of filters, one per service (STYLE.md 15).

Envoy's HTTP filters and Traefik's middlewares model a gateway this way; so does this package.
Route resolution (`chains.Chains.exchange`, its decision `route.route`) picks the chain of a
request: its service's, or the forward to another region's ELBs. Each chain is built once, when a
config snapshot is applied (`chains.build_chains`, the one place that orders filters); a reload
swaps every chain at once, and a request finishes on the chain it started with. Today's chains:

    service:          auth | vouch_client -> cache -> response_headers -> forward
    another region:   response_headers -> forward_to_region

How a filter is written
  A module here, with its decision sans-IO (a pure function of the request and the config,
  tested without an event loop: `route.route`, `proxy.auth.Authorizer.decide`,
  `proxy.cache.policy`, `proxy.retry.Attempts`, `proxy.forwarding`) and a thin class that does
  what the decision says. The class has a ``name`` and any of these hooks (`chain` runs them):
  - ``on_request(ex) -> None | Response | Awaitable``: None goes on (whatever the filter decided
    is written on the `chain.Exchange`: headers for the upstream, the target...); a `Response`
    answers now; an awaitable only when the decision needs I/O (it then resolves to either).
    Refusals raise `httpio.errors` as everywhere (401, 403, 405, 429...).
  - ``on_response(ex, response) -> Response``: on the way back, in reverse request order, for
    every response that passes it (also an early answer given by a filter after it).
  - ``async around(ex, rest)``: runs the rest of the chain (``await rest.run(ex)``) or answers
    instead; it costs one coroutine per request, so only a filter that must see what comes
    back after I/O of its own (the cache) is one.
  - ``async respond(ex)``: the terminal, last in every chain.
  A filter holds only what its snapshot says (policies, settings) plus references to what the
  proxy keeps across snapshots (pools, limiters, the auth client, the cache); it is built once
  and never per request, and a synchronous decision costs a method call, not an await.

The slots of a service's chain, in request order (`chains.service_filters` is the one list;
each is present only when the service configures it, so an unconfigured service's chain is
the one it had before issue 11):

    1 ip_filter        allow/deny CIDRs on the real client address        403
    2 cors             preflight answered 204; grants added on the way back
    3 route_method     the explicit route's methods (`routes.RouteTable` is matched in route
                       resolution, before /<service>/, and picks chain and target)   405 + Allow
    4 max_body         a declared Content-Length over max_body_bytes       413
    5 rate_limit       each limit keyed on client_ip / header: / service   429
    6 auth             (or vouch_client)                                   401 / 403
    7 rate_limit       each limit keyed on user / claim: (needs the verified token)   429
    8 request_headers  set/add/remove on what goes upstream
    9 response_header_rules   on the way back, every answer (cache hits too); before the cache,
                       so a value rendered for one client is never stored for another
   10 cache
   11 response_headers the upstream's headers as the client gets them (Via, X-Request-ID)
   12 forward          the terminal
    another region:    response_headers -> forward_to_region

CORS sits before the cache as well, so grants are computed per request and never stored.
A chain of filters configured but not triggering is measured against one without by
``make bench-edge`` (`bench.edge`).
"""

from httpio.accel import package_path as _package_path

__path__ = _package_path(__name__, __path__)  # the compiled modules first, when fresh
