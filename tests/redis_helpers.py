"""A real redis-server for the cache tests (loadtests.redis_process, shared with the cache
benchmark), and the marker that skips them where redis-server is not installed."""

from __future__ import annotations

import pytest

from loadtests.redis_process import REDIS_SERVER, RedisProcess

needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (apt-get install redis-server)"
)

__all__ = ["RedisProcess", "needs_redis"]
