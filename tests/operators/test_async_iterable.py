"""to_async_iterable: async for over observables, from the loop and other threads."""

from __future__ import annotations

import asyncio
import threading

import pytest
import reactivex
from reactivex.subject import Subject

from rxvoice import operators as vops
from rxvoice.errors import UsageError


async def test_iterates_until_completion():
    items = [item async for item in reactivex.of(1, 2, 3).pipe(vops.to_async_iterable())]
    assert items == [1, 2, 3]


async def test_items_from_another_thread_reach_the_loop():
    subject: Subject[int] = Subject()
    iterator = subject.pipe(vops.to_async_iterable())
    first = asyncio.ensure_future(iterator.__anext__())
    await asyncio.sleep(0)  # let it subscribe
    loop_thread = threading.get_ident()
    seen_threads: list[int] = []

    def produce() -> None:
        for n in range(100):
            subject.on_next(n)
        subject.on_completed()

    thread = threading.Thread(target=produce)
    thread.start()
    items = [await first]
    async for item in iterator:
        seen_threads.append(threading.get_ident())
        items.append(item)
    thread.join()
    assert items == list(range(100))
    assert set(seen_threads) == {loop_thread}


async def test_errors_are_raised_after_the_items():
    source = reactivex.concat(reactivex.of(1), reactivex.throw(RuntimeError("boom")))
    items = source.pipe(vops.to_async_iterable())
    assert await items.__anext__() == 1
    with pytest.raises(RuntimeError, match="boom"):
        await items.__anext__()


async def test_closing_unsubscribes():
    subject: Subject[int] = Subject()
    async with subject.pipe(vops.to_async_iterable()) as items:
        waiter = asyncio.ensure_future(items.__anext__())
        await asyncio.sleep(0)
        assert subject.observers
        subject.on_next(1)
        assert await waiter == 1
    assert not subject.observers
    with pytest.raises(StopAsyncIteration):
        await items.__anext__()


async def test_max_pending_drops_the_oldest():
    subject: Subject[int] = Subject()
    items = subject.pipe(vops.to_async_iterable(max_pending=2))
    waiter = asyncio.ensure_future(items.__anext__())
    await asyncio.sleep(0)
    subject.on_next(0)
    assert await waiter == 0
    for n in range(1, 6):
        subject.on_next(n)
    subject.on_completed()
    assert [item async for item in items] == [4, 5]
    assert items.dropped == 3
    with pytest.raises(UsageError):
        vops.to_async_iterable(max_pending=0)


async def test_items_from_a_thread_are_not_lost_when_the_loop_completes():
    # Items emitted on a decoder thread and a completion on the loop thread:
    # the completion must not overtake the items still on their way.
    subject: Subject[int] = Subject()
    iterator = subject.pipe(vops.to_async_iterable())
    first = asyncio.ensure_future(iterator.__anext__())
    await asyncio.sleep(0)  # let it subscribe
    thread = threading.Thread(target=lambda: [subject.on_next(n) for n in range(20)])
    thread.start()
    thread.join()
    subject.on_completed()  # on the loop thread, right after
    items = [await first] + [item async for item in iterator]
    assert items == list(range(20))


async def test_aclose_drops_what_is_queued():
    subject: Subject[int] = Subject()
    iterator = subject.pipe(vops.to_async_iterable())
    first = asyncio.ensure_future(iterator.__anext__())
    await asyncio.sleep(0)
    for n in range(3):
        subject.on_next(n)
    assert await first == 0
    await iterator.aclose()
    assert [item async for item in iterator] == []
