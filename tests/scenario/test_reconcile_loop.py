"""When the reconcile loop runs its passes: pokes, coalescing, the periodic resync, retries."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from pyflannel.aio import spawn
from pyflannel.core.renewal import Backoff
from pyflannel.errors import BackendError
from pyflannel.netlink.applier import ReconcileLoop


class Recorder:
    """A step that records the loop's ``full`` flags and can be made slow or failing."""

    def __init__(self, delay: float = 0.0, failures: int = 0) -> None:
        self.loop: ReconcileLoop | None = None
        self.calls: list[bool] = []
        self.delay = delay
        self.failures = failures

    def bind(self, **options: Any) -> ReconcileLoop:
        self.loop = ReconcileLoop(self, **options)
        return self.loop

    async def __call__(self) -> None:
        assert self.loop is not None
        self.calls.append(self.loop.full)
        await asyncio.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise BackendError("kernel said no")


async def run_for(loop: ReconcileLoop, seconds: float) -> None:
    task = spawn(loop.run(), name="loop-under-test")
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_nothing_runs_before_the_first_poke() -> None:
    step = Recorder()
    await run_for(step.bind(period=0.01), 0.1)
    assert step.calls == []


async def test_pokes_during_a_pass_coalesce_into_one_more_pass() -> None:
    step = Recorder(delay=0.05)
    loop = step.bind(period=10)
    task = spawn(loop.run(), name="loop-under-test")
    loop.poke()
    await asyncio.sleep(0.01)
    for _ in range(20):
        loop.poke()
    await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert step.calls == [False, False]


async def test_the_period_brings_full_passes_and_a_poke_may_ask_for_one() -> None:
    step = Recorder()
    loop = step.bind(period=0.05)
    task = spawn(loop.run(), name="loop-under-test")
    loop.poke()
    await asyncio.sleep(0.13)
    loop.poke(0.01, full=True)
    await asyncio.sleep(0.03)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert step.calls[:3] == [False, True, True]
    assert step.calls[-1] is True


async def test_a_transient_failure_is_retried_fully_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pyflannel.netlink.applier")
    step = Recorder(failures=2)
    backoff = Backoff(initial=0.02, cap=0.02, jitter=0)
    loop = step.bind(period=10, transient=(BackendError,), backoff=backoff)
    loop.poke()
    await run_for(loop, 0.15)
    assert step.calls == [False, True, True]
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("kernel programming failed, retrying: kernel said no") == 1
    assert "kernel programming succeeded after 2 retries" in messages


async def test_other_failures_end_the_loop() -> None:
    async def broken() -> None:
        raise RuntimeError("bug")

    loop = ReconcileLoop(broken, period=10, transient=(BackendError,))
    loop.poke()
    with pytest.raises(RuntimeError, match="bug"):
        await asyncio.wait_for(loop.run(), 1)


async def test_with_full_every_only_every_nth_period_runs() -> None:
    step = Recorder()
    loop = step.bind(period=0.02, full_every=5)
    loop.poke()
    await run_for(loop, 0.25)  # about twelve periods: two or three of them run
    assert step.calls[0] is False
    assert 1 <= len(step.calls) - 1 <= 3
    assert all(step.calls[1:])


async def test_a_doubt_makes_the_next_period_run() -> None:
    step = Recorder()
    loop = step.bind(period=0.05, full_every=1000)
    task = spawn(loop.run(), name="loop-under-test")
    loop.poke()
    await asyncio.sleep(0.01)
    loop.doubt()
    await asyncio.sleep(0.3)  # six periods: the first runs, the others are quiet
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert step.calls == [False, True]
