"""When to renew our lease, and how long to wait between retries.

flanneld renews ``margin`` minutes before the lease expires (default 60 of 24 h) and,
after a failed renewal, tries again a minute later. A reservation (no expiration)
is never renewed. Retries elsewhere use capped exponential backoff with jitter so a
fleet of hosts does not hammer an etcd that just came back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

LEASE_TTL = 24 * 3600
RENEW_RETRY = 60.0


def renewal_delay(expiration: float | None, margin_minutes: int, now: float) -> float | None:
    """Seconds until the lease should be renewed; None for a reservation.

    Never negative: an overdue lease is renewed at once.
    """
    if expiration is None:
        return None
    return max(0.0, expiration - margin_minutes * 60 - now)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff: ``initial * factor**attempt``, at most ``cap``,
    scaled by a random factor in [1 - jitter, 1]."""

    initial: float = 0.1
    cap: float = 5.0
    factor: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry number ``attempt`` (0-based)."""
        base = min(self.cap, self.initial * self.factor ** min(attempt, 64))
        if rng is None or self.jitter == 0:
            return base
        return base * (1 - self.jitter * rng.random())
