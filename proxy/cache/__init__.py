"""The static response cache: RFC 9111 rules (`policy`), a memory tier (`memory`), memory +
Redis behind a breaker (`store`), and the `HttpCache` the proxy calls (`layer`)."""

from proxy.cache.layer import HttpCache, redis_pool_for
from proxy.cache.policy import CacheSettings, ServiceCacheSettings

__all__ = ["CacheSettings", "HttpCache", "ServiceCacheSettings", "redis_pool_for"]
