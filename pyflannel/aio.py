"""asyncio discipline: named, guarded tasks and one backoff helper.

This is the only module allowed to create tasks. Every task gets a name (so a
stuck daemon's task dump is readable) and a reference is kept until it finishes,
so it cannot be garbage-collected half way; failures are logged, never lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from pyflannel.core.renewal import Backoff

logger = logging.getLogger(__name__)
T = TypeVar("T")
_TASKS: set[asyncio.Task[Any]] = set()
RETRY_BACKOFF = Backoff(initial=0.5, cap=30.0)


def spawn(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """Start ``coro`` as a named background task whose failure is logged."""
    task = asyncio.create_task(coro, name=name)
    _TASKS.add(task)
    task.add_done_callback(_reap)
    return task


def _reap(task: asyncio.Task[Any]) -> None:
    _TASKS.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("task %s failed", task.get_name(), exc_info=task.exception())


async def retry(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    retry_on: tuple[type[BaseException], ...],
    backoff: Backoff = RETRY_BACKOFF,
    log: logging.Logger = logger,
) -> T:
    """Run ``op`` until it succeeds, sleeping with backoff after each transient failure.

    An outage is logged once when it starts and once when it ends, not on every try.
    """
    rng = random.Random()
    attempt = 0
    while True:
        try:
            result = await op()
        except retry_on as exc:
            if attempt == 0:
                log.warning("%s failed, retrying with backoff: %s", what, exc)
            await asyncio.sleep(backoff.delay(attempt, rng))
            attempt += 1
            continue
        if attempt:
            log.info("%s succeeded after %d retries", what, attempt)
        return result
