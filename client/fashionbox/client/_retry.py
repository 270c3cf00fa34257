"""When to retry a failed call and how long to wait: decided here once, for both clients.

:func:`retry_delay_s` is pure (policy, attempt number, error, time left, one random number in,
a delay or ``None`` out). :class:`Attempts` adds the clock: it holds one call's deadline and
counts its attempts. Each client only sleeps the way its I/O model sleeps::

    attempts = Attempts(policy, timeout_s)
    while True:
        try:
            return call(timeout_s=attempts.start())
        except FashionBoxError as error:
            delay_s = attempts.delay_after(error)
            if delay_s is None:
                raise
            time.sleep(delay_s)          # the asyncio client: await asyncio.sleep(delay_s)
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from ._config import RetryPolicy
from ._exceptions import DeadlineExceeded, FashionBoxError

__all__ = ["Attempts", "retry_delay_s"]

_log = logging.getLogger("fashionbox.client")


def retry_delay_s(
    policy: RetryPolicy, *, attempt: int, error: FashionBoxError, remaining_s: float, random_fraction: float
) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or ``None`` to raise ``error`` now.

    ``None`` when the error is not worth retrying (``error.retryable``), when ``attempt`` was the
    policy's last, or when the backoff would end at or after the deadline (``remaining_s`` left):
    sleeping into the deadline only to fail with a less telling error helps nobody.
    """
    if not error.retryable or attempt >= policy.max_attempts:
        return None
    delay_s = policy.backoff_s(attempt, random_fraction)
    if delay_s >= remaining_s:
        return None
    return delay_s


class Attempts:
    """The attempts of one call: its deadline, how many were made, and the delay after a failure.

    Args:
        policy: the client's retry policy.
        timeout_s: the whole call's budget, every attempt and backoff included.
        clock: monotonic seconds (tests pass a fake).
        random_fraction: uniform numbers in ``[0, 1)`` for the jitter.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        timeout_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._random_fraction = random_fraction
        self._timeout_s = timeout_s
        self._deadline = clock() + timeout_s
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Attempts started so far (1 during the first)."""
        return self._attempt

    def remaining_s(self) -> float:
        return self._deadline - self._clock()

    def start(self) -> float:
        """Count a new attempt and return its timeout: the time left until the call's deadline."""
        remaining_s = self.remaining_s()
        if remaining_s <= 0:
            # Only after a backoff that ended just at the deadline; never before the first attempt.
            raise DeadlineExceeded(f"the call's {self._timeout_s:g} s ran out after {self._attempt} attempts")
        self._attempt += 1
        return remaining_s

    def delay_after(self, error: FashionBoxError) -> float | None:
        """The backoff before the next attempt, or ``None``: then raise ``error``."""
        delay_s = retry_delay_s(
            self._policy,
            attempt=self._attempt,
            error=error,
            remaining_s=self.remaining_s(),
            random_fraction=self._random_fraction(),
        )
        if delay_s is not None:
            attempts = f"{self._attempt} of {self._policy.max_attempts}"
            _log.info("attempt %s failed (%s); retrying in %.3f s", attempts, error, delay_s)
        return delay_s
