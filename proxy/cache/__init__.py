"""The static response cache: RFC 9111 rules (`policy`), a memory tier (`memory`), memory +
Redis behind a breaker (`store`), and the `HttpCache` the proxy calls (`layer`). Its settings
(``cache:`` of a service, ``Cache`` of config.json) are `topology.schema`'s."""

from httpio.accel import package_path as _package_path

__path__ = _package_path(__name__, __path__)  # the compiled modules first, when fresh

from proxy.cache.layer import HttpCache, redis_settings_for

__all__ = ["HttpCache", "redis_settings_for"]
