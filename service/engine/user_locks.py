"""One FIFO mutex per user, held while an event (or a delete) for that user is in progress.

A user's events must be applied in the order they arrived: the holder hands the lock straight
to the oldest waiter, so a later event never overtakes an earlier one. :meth:`UserLocks.take`
acquires without awaiting, which the batched event lane (service.engine.lane) needs: it claims
every user of a batch in one synchronous pass. A user without holder or waiters has no entry.
"""

import asyncio
from collections import deque


class UserLocks:
    """``user id → holder and waiting futures`` (absent: free)."""

    def __init__(self) -> None:
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        """Users whose lock is held."""
        return len(self._waiters)

    def held(self, user_id: str) -> bool:
        return user_id in self._waiters

    def take(self, user_id: str) -> bool:
        """Acquire ``user_id``'s lock if it is free, without waiting; True if acquired."""
        if user_id in self._waiters:
            return False
        self._waiters[user_id] = deque()
        return True

    async def acquire(self, user_id: str) -> None:
        """Wait for ``user_id``'s lock behind every earlier caller."""
        waiters = self._waiters.get(user_id)
        if waiters is None:
            self._waiters[user_id] = deque()
            return
        future = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # handed over just before the cancel
                self.release(user_id)
            raise

    def release(self, user_id: str) -> None:
        """Hand the lock to the oldest live waiter, or free it."""
        waiters = self._waiters[user_id]
        while waiters:
            future = waiters.popleft()
            if not future.done():  # a cancelled waiter's future is done
                future.set_result(None)
                return
        del self._waiters[user_id]
