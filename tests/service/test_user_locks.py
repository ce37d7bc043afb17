"""Per-user FIFO locks (service.engine.user_locks): one holder, arrival order, cancellation."""

import asyncio

from service.engine.user_locks import UserLocks


def test_waiters_get_the_lock_in_arrival_order_and_take_never_waits() -> None:
    async def main() -> list[str]:
        locks, order = UserLocks(), []
        assert locks.take("u")
        assert not locks.take("u")  # held: take refuses instead of waiting
        assert locks.take("other")  # users are independent

        async def waiter(name: str) -> None:
            await locks.acquire("u")
            order.append(name)
            await asyncio.sleep(0)
            locks.release("u")

        tasks = [asyncio.create_task(waiter(f"w{n}")) for n in range(5)]
        await asyncio.sleep(0)
        assert not locks.take("u")  # five waiting: a newcomer cannot barge in
        locks.release("u")
        await asyncio.gather(*tasks)
        locks.release("other")
        assert len(locks) == 0  # freed users leave no entry
        return order

    assert asyncio.run(main()) == [f"w{n}" for n in range(5)]


def test_a_cancelled_waiter_is_skipped_and_never_keeps_the_lock() -> None:
    async def main() -> bool:
        locks = UserLocks()
        await locks.acquire("u")
        cancelled = asyncio.create_task(locks.acquire("u"))
        handed = asyncio.create_task(locks.acquire("u"))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        locks.release("u")  # skips the cancelled waiter
        await handed
        assert locks.held("u")
        locks.release("u")
        # Cancelled after the lock was handed over, before it ran: it passes the lock on.
        await locks.acquire("u")
        late = asyncio.create_task(locks.acquire("u"))
        await asyncio.sleep(0)
        locks.release("u")
        late.cancel()
        await asyncio.gather(late, return_exceptions=True)
        return locks.held("u")

    assert asyncio.run(main()) is False
