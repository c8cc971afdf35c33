"""Flow control of the service loop: retries with backoff while a broker is away, and a
batch-size budget that keeps the slowest step inside the consumer's poll deadline.

A Kafka consumer that does not call ``poll`` within ``max.poll.interval.ms`` is expelled
from its group, and its next commit fails (kafka-python's ``CommitFailedError``). An
adaptation burst (test-time adaptation, a memory refresh) can make one batch much slower
than the rest, so :class:`PollBudget` remembers the slowest per-record cost seen lately and
cuts the batch so that such a batch still ends within half the deadline.

:class:`Backoff` is capped exponential backoff with jitter, as recommended for retrying
clients by Brooker, "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015).

>>> b = Backoff(0.1, 1.0, seed=0)
>>> [round(b.next(), 3) for _ in range(5)]
[0.092, 0.176, 0.284, 0.504, 0.756]
>>> budget = PollBudget(batch_size=1000, max_poll_interval_s=10.0)
>>> budget.limit(1000)
1000
>>> budget.observe(100, 2.0)   # 20 ms per record: 1000 records would take 20 s
>>> budget.limit(1000)         # at most half of the 10 s deadline
250
"""

from __future__ import annotations

import logging
import random
import threading
import time

__all__ = ["Backoff", "PollBudget", "SinkUnavailable", "SourceUnavailable"]

log = logging.getLogger("streamadapt.flowcontrol")


class SinkUnavailable(RuntimeError):
    """A sink could not deliver within its timeout. It keeps the undelivered records, and
    the next ``flush`` retries them."""


class SourceUnavailable(RuntimeError):
    """The source could not commit (the broker is away); a later commit covers it."""


class Backoff:
    """Capped exponential backoff with jitter: the i-th wait is uniform in
    ``[d/2, d]`` with ``d = min(max_s, base_s * 2**i)``.

    Parameters
    ----------
    base_s
        The first delay's upper bound.
    max_s
        The longest delay.
    seed
        Seed of the jitter.
    """

    def __init__(self, base_s: float = 0.2, max_s: float = 5.0, seed: int | None = 0) -> None:
        if base_s <= 0 or max_s < base_s:
            raise ValueError(f"need 0 < base_s <= max_s, got base_s={base_s!r}, max_s={max_s!r}")
        self.base_s = base_s
        self.max_s = max_s
        self.seed = seed
        self._rng = random.Random(seed)
        self.attempt = 0

    @property
    def peek(self) -> float:
        """The upper bound of the next delay."""
        return min(self.max_s, self.base_s * 2.0**self.attempt)

    def next(self) -> float:
        """The next delay in seconds."""
        d = self.peek
        self.attempt += 1
        return d * (0.5 + 0.5 * self._rng.random())

    def sleep(self, stop: threading.Event | None = None) -> None:
        """Wait the next delay, returning early when ``stop`` is set."""
        delay = self.next()
        if stop is not None:
            stop.wait(delay)
        else:
            time.sleep(delay)

    def reset(self) -> None:
        self.attempt = 0


class PollBudget:
    """Caps the records per poll so a batch at the slowest recent per-record cost ends
    within ``share`` of ``max_poll_interval_s``.

    Parameters
    ----------
    batch_size
        The configured batch size (the cap never exceeds it).
    max_poll_interval_s
        The consumer's poll deadline; None disables the budget.
    share
        The share of the deadline one batch may use.
    decay
        Per batch, the remembered slowest cost decays by this factor towards the current
        cost, so that one burst does not shrink batches for ever.
    """

    def __init__(
        self,
        batch_size: int,
        max_poll_interval_s: float | None,
        share: float = 0.5,
        decay: float = 0.98,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share!r}")
        self.batch_size = batch_size
        self.max_poll_interval_s = max_poll_interval_s
        self.share = share
        self.decay = decay
        #: The slowest recent processing cost per record, seconds.
        self.slowest_s = 0.0
        #: The longest batch seen, seconds.
        self.longest_batch_s = 0.0

    def observe(self, n: int, seconds: float) -> None:
        """Account one batch of ``n`` records that took ``seconds`` from poll to commit."""
        if n <= 0:
            return
        self.longest_batch_s = max(self.longest_batch_s, seconds)
        self.slowest_s = max(seconds / n, self.slowest_s * self.decay)
        if self.max_poll_interval_s and seconds > self.share * self.max_poll_interval_s:
            log.warning(
                "a batch of %d records took %.1f s, over %.0f%% of max_poll_interval "
                "(%.0f s): batches will be cut", n, seconds, 100 * self.share,
                self.max_poll_interval_s,
            )

    def limit(self, n: int) -> int:
        """The number of records to poll when ``n`` are wanted."""
        n = min(n, self.batch_size)
        if not self.max_poll_interval_s or self.slowest_s <= 0:
            return n
        allowed = int(self.share * self.max_poll_interval_s / self.slowest_s)
        return max(1, min(n, allowed))
