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

Where issue 11's filters slot in, in its order (request direction; the list is one
`chains.service_filters`): ``ip_filter`` (allow/deny CIDRs, 403) -> ``cors`` (a preflight
answered 204 by ``on_request``; grants added by ``on_response``) -> ``route_method`` (405 with
``Allow``; explicit routes and Host matching extend route resolution, which picks the chain and
the target) -> ``rate_limit`` by client address -> **auth** -> ``rate_limit`` by identity (it reads
the identity auth wrote on the `Exchange`) -> ``request_headers`` rules -> **cache** ->
``response_headers`` rules, placed just before today's **response_headers** (so that on the way
back they see what it wrote; behind the cache, so stored answers carry them) -> **forward**.
A chain of filters that are configured but do not trigger must stay within 10 % of one without
(issue 11's bench scenario).
"""
