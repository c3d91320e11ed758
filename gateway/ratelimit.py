"""Requests per caller (GATEWAY_RATE_LIMIT): a token bucket per API key, user or developer, in this
process. Over it: HTTP 429, `Retry-After`, and `RATE_LIMITED`; other callers are unaffected."""

import math
import time

from gateway.auth import Caller
from gateway.errors import RateLimited

_PRUNE_EVERY = 10_000  # buckets; full ones (idle callers) are dropped then, bounding the memory


class RateLimiter:
    def __init__(self, requests: int, period_seconds: int) -> None:
        self.capacity = float(requests)
        self.per_second = requests / period_seconds
        self.description = f"{requests} requests per {period_seconds} s"
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # caller: (tokens, when)

    def check(self, caller: Caller) -> None:
        """Take one request from the caller's allowance, or raise RateLimited."""
        now = time.monotonic()
        key = (caller.kind.value, caller.name)
        tokens, then = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.per_second)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            retry_after = max(1, math.ceil((1 - tokens) / self.per_second))
            raise RateLimited(
                f"too many requests: the limit is {self.description} per caller; retry in {retry_after} s",
                retryAfter=retry_after,
            )
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > _PRUNE_EVERY:
            self._prune(now)

    def _prune(self, now: float) -> None:
        refill = self.capacity / self.per_second
        self._buckets = {key: value for key, value in self._buckets.items() if now - value[1] < refill}
