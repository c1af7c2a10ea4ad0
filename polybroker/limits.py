"""Rate limits and bounds for input the broker does not control.

- ``TokenBucket``: ``rate`` tokens a second, at most ``burst`` saved up.
- ``ConnectionRate``: a listener's ``max_connection_rate``; a connection beyond it is
  closed right after accept.
- ``PublishThrottle``: a connection's ``max_publish_rate``; the reader waits before its
  next read until the client's messages are paid for, so TCP slows the client down and
  nothing it was promised is dropped.
- ``RetainedBound``: ``max_retained_messages`` / ``max_retained_bytes``; a new retained
  topic beyond them is not stored.
- ``RateLimitedLog``: one warning per interval, however often the event happens, so a
  flood of refused connections does not flood the log.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .message import Message
    from .retained import RetainedStore

__all__ = ["ConnectionRate", "PublishThrottle", "RateLimitedLog", "RetainedBound", "TokenBucket"]

LOG_INTERVAL = 10.0  # seconds between two warnings about the same limit


class TokenBucket:
    """``rate`` tokens a second, saved up to ``burst``; starts full.

    ``take`` spends a token only if one is there; ``spend`` may run into debt, which
    ``delay`` says how long it takes to repay.
    """

    __slots__ = ("_clock", "_stamp", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self._clock = clock
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self) -> bool:
        """Spend one token if there is one."""
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def spend(self, count: int) -> None:
        """Spend ``count`` tokens, into debt if need be."""
        self._refill()
        self.tokens -= count

    def delay(self) -> float:
        """Seconds until the balance is no longer negative."""
        self._refill()
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


def default_burst(rate: float) -> int:
    """One second's worth, at least one."""
    return max(1, math.ceil(rate))


class RateLimitedLog:
    """Log an event at most once per ``interval``; the next line counts those left out."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.suppressed = 0
        self._next = -math.inf

    def warning(self, message: str, *args: object) -> None:
        now = self.clock()
        if now < self._next:
            self.suppressed += 1
            return
        if self.suppressed:
            message += f" (and {self.suppressed} more like it in the last {self.interval:g}s)"
            self.suppressed = 0
        self.logger.warning(message, *args)
        self._next = now + self.interval


class ConnectionRate:
    """A listener's ``max_connection_rate``: whether one more connection may start now."""

    def __init__(self, url: str, rate: float, burst: int | None, logger: logging.Logger,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.url = url
        self.bucket = TokenBucket(rate, burst or default_burst(rate), clock)
        self.refused = 0
        self._log = RateLimitedLog(logger)

    def admit(self, peer: str) -> bool:
        if self.bucket.take():
            return True
        self.refused += 1
        self._log.warning("%s: connection from %s refused: max_connection_rate (%g/s) "
                          "exceeded (%d refused so far)",
                          self.url, peer, self.bucket.rate, self.refused)
        return False


class PublishThrottle:
    """A connection's ``max_publish_rate``. The adapter ``count``s each message a client
    publishes while it handles one read, then ``settle``s before the next read: when the
    bucket is in debt the reader sleeps until it is repaid, so a flooding client is slowed
    by TCP back-pressure, loses nothing it was acknowledged, and other clients go on.
    A rate of 0 turns it off."""

    __slots__ = ("_bucket", "_count", "throttled")

    def __init__(self, rate: float, burst: int = 0) -> None:
        self._bucket = (TokenBucket(rate, burst or default_burst(rate), trio.current_time)
                        if rate > 0 else None)
        self._count = 0
        self.throttled = 0.0  # seconds spent waiting, for the log line at the end

    def count(self) -> None:
        self._count += 1

    async def settle(self) -> float:
        """Pay for the messages counted since the last call; wait while in debt. The
        seconds waited, by which the caller extends its idle deadline (the client was
        not silent, the broker was not reading)."""
        if self._bucket is None or not self._count:
            return 0.0
        self._bucket.spend(self._count)
        self._count = 0
        delay = self._bucket.delay()
        if delay > 0:
            self.throttled += delay
            await trio.sleep(delay)
        return delay


class RetainedBound:
    """``max_retained_messages`` and ``max_retained_bytes`` (payload bytes; 0: none).

    A retained message for a topic that already has one (a replacement) is always
    stored; a new topic beyond either bound is not: the message still goes to the
    current subscribers and is acknowledged as usual, the refusal is counted and logged
    at most once per interval (as EMQX's retainer does when it is full)."""

    def __init__(self, max_messages: int, max_bytes: int, logger: logging.Logger) -> None:
        self.max_messages = max_messages or math.inf
        self.max_bytes = max_bytes or math.inf
        self.refused = 0
        self._log = RateLimitedLog(logger)

    def admits(self, store: RetainedStore[Message], message: Message) -> bool:
        if len(store) < self.max_messages and store.size + len(message.payload) <= self.max_bytes:
            return True
        if store.get(message.topic) is not None:
            return True  # replacing an existing retained message is always allowed
        self.refused += 1
        self._log.warning("retained message to %s from %s not stored: max_retained_messages "
                          "(%s) or max_retained_bytes (%s) reached (%d refused so far)",
                          message.topic, message.origin_client, _bound(self.max_messages),
                          _bound(self.max_bytes), self.refused)
        return False


def _bound(value: float) -> str:
    return "none" if value == math.inf else str(int(value))
