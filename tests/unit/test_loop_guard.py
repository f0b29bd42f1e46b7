"""The event-loop guard of ``tests/conftest.py`` sees a blocked loop, and says where."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import LoopBlockGuard, _waits_for_cpu


def spin(seconds: float) -> None:
    """Hold the loop with ``seconds`` of CPU work (thread time: however loaded the machine
    is, the work is the same, and so is what the guard counts)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@pytest.mark.loop_block_ok("blocks the loop on purpose")
async def test_a_busy_callback_is_a_stall_with_its_stack(
    loop_block_guard: LoopBlockGuard | None,
) -> None:
    assert loop_block_guard is not None
    await asyncio.sleep(LoopBlockGuard.INTERVAL * 2)
    spin(0.3)
    await asyncio.sleep(LoopBlockGuard.INTERVAL * 2)  # the heartbeat wakes, late
    # (A loaded machine may add a stall of its own around it: only the spin's is asserted.)
    spins = [s for s in loop_block_guard.stalls if "in spin" in s.stack]
    assert len(spins) == 1, loop_block_guard.stalls
    assert spins[0].blocked_s > 0.2


@pytest.mark.loop_block_ok("blocks the loop on purpose")
@pytest.mark.skipif(not _waits_for_cpu(), reason="needs Linux's schedstat")
async def test_a_blocking_sleep_is_a_stall_too(loop_block_guard: LoopBlockGuard | None) -> None:
    assert loop_block_guard is not None
    await asyncio.sleep(LoopBlockGuard.INTERVAL * 2)
    time.sleep(0.3)  # noqa: ASYNC251 - the point of the test
    await asyncio.sleep(LoopBlockGuard.INTERVAL * 2)
    assert any(s.blocked_s > 0.2 for s in loop_block_guard.stalls), loop_block_guard.stalls


async def test_short_steps_are_not_stalls(loop_block_guard: LoopBlockGuard | None) -> None:
    assert loop_block_guard is not None
    for _ in range(20):
        spin(0.01)
        await asyncio.sleep(0)
    assert loop_block_guard.stalls == []


@pytest.mark.loop_block_ok("blocks the loop on purpose")
async def test_a_test_that_never_awaits_is_watched_to_its_end() -> None:
    guard = LoopBlockGuard(0.1)

    async def never_awaits() -> None:
        spin(0.3)

    await guard.run(never_awaits())
    assert [s.blocked_s > 0.2 for s in guard.stalls] == [True]
