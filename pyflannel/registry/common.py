"""Pieces both etcd registries share: key paths and outage reporting."""

from __future__ import annotations

import asyncio
import logging
import posixpath
import random
import time

from pyflannel.core.renewal import Backoff
from pyflannel.errors import RegistryError

logger = logging.getLogger(__name__)


def join_key(*parts: str) -> str:
    """Go's ``path.Join``: join with slashes, drop empty parts, clean the result."""
    joined = "/".join(part for part in parts if part)
    if not joined:
        return ""
    cleaned = posixpath.normpath(joined)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


class Outage:
    """Log a watch outage once when it starts and once when it ends; pace retries.

    An operator reading the journal at 3 a.m. wants one line saying etcd went away
    and one saying it came back, not one per reconnection attempt.
    """

    def __init__(self, what: str, log: logging.Logger = logger) -> None:
        self.what = what
        self._log = log
        self._attempt = 0
        self._since = 0.0
        self._rng = random.Random()

    async def failed(self, exc: RegistryError, backoff: Backoff) -> None:
        """Note a failure (logging it if it starts an outage) and sleep before the retry."""
        if self._attempt == 0:
            self._since = time.monotonic()
            self._log.warning("%s failed, reconnecting with backoff: %s", self.what, exc)
        await asyncio.sleep(backoff.delay(self._attempt, self._rng))
        self._attempt += 1

    def recovered(self) -> None:
        """Note success; logs the end of an outage if one was under way."""
        if self._attempt:
            self._log.info(
                "%s resumed after %.1f s (%d attempts)",
                self.what,
                time.monotonic() - self._since,
                self._attempt,
            )
        self._attempt = 0
