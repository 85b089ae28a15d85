"""One shared Redis client for the control plane, and the key prefix every Redis key carries."""

from __future__ import annotations

from functools import lru_cache

import redis
from django.conf import settings


@lru_cache(maxsize=1)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


def get_redis() -> redis.Redis:
    """Return the process-wide client for ``settings.REDIS_URL`` (connection-pooled)."""
    return _client(settings.REDIS_URL)


def redis_key(*parts: str) -> str:
    """A Redis key under the platform prefix: ``redis_key("access", "v1")`` is ``vl:access:v1``."""
    return settings.VLINDERS_REDIS_PREFIX + ":".join(parts)
