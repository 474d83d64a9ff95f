"""The bounded send queue: live frames never block, replies and replays wait for room."""

from __future__ import annotations

import anyio
import pytest

from ws_gateway.subscriptions import Outbox

pytestmark = pytest.mark.anyio


async def test_offer_refuses_when_full() -> None:
    outbox = Outbox(4)
    assert all(outbox.offer(b"%d" % i) for i in range(4))
    assert not outbox.offer(b"5")
    assert [await outbox.get() for _ in range(4)] == [b"0", b"1", b"2", b"3"]


async def test_put_waits_until_at_most_half_full() -> None:
    outbox = Outbox(4)
    for i in range(2):
        outbox.offer(b"%d" % i)
    done = anyio.Event()

    async def put() -> None:
        await outbox.put(b"late")
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(put)
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()
        assert await outbox.get() == b"0"
        await done.wait()
    assert len(outbox) == 2
    assert [await outbox.get(), await outbox.get()] == [b"1", b"late"]


async def test_get_waits_for_a_frame() -> None:
    outbox = Outbox(4)
    got: list[bytes] = []

    async def get() -> None:
        got.append(await outbox.get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(get)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        outbox.offer(b"x")
    assert got == [b"x"]


async def test_the_queue_is_bounded_in_bytes_too() -> None:
    outbox = Outbox(100, capacity_bytes=10)
    assert outbox.offer(b"123456") and not outbox.offer(b"12345")
    assert outbox.offer(b"1234") and outbox.bytes == 10
    assert await outbox.get() == b"123456"
    # A frame bigger than the whole bound still passes an empty queue.
    await outbox.get()
    assert outbox.offer(b"x" * 50) and not outbox.offer(b"y")


async def test_put_waits_until_at_most_half_full_in_bytes() -> None:
    outbox = Outbox(100, capacity_bytes=10)
    outbox.offer(b"12345")
    done = anyio.Event()

    async def put() -> None:
        await outbox.put(b"reply")
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(put)
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()
        assert await outbox.get() == b"12345"
        await done.wait()
    assert await outbox.get() == b"reply"
