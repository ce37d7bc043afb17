"""Busy polling (``LRUREC_BUSY_POLL_US``): after each request the worker's event loop keeps
polling its sockets for a while instead of sleeping in ``epoll_wait`` until the next one.

Why: a worker that falls asleep between batches pays for every wake-up, and more so in a VM,
where an idle vCPU halts and needs an interrupt to run again; meanwhile the scheduler lends its
idle core to the load generator and redis-server, which the worker then has to wait for. On one
worker at 3,000 events/s on the 2-core VM of benchmarks/RESULTS.md, polling for a while after
each request brought p99 from 25-34 ms down to 11-13 ms in most runs.

The price is CPU: while requests keep coming (and for the window after the last one) the
worker uses its whole core, whatever the load. Give each polling worker a core of its own (in
Kubernetes a whole-CPU request and limit with the static CPU manager policy); under a CPU
quota, polling burns the quota. Off by default.
"""

import asyncio
import time


class BusyPoll:
    """Keeps an event loop polling for ``window`` seconds after the last :meth:`touch`.

    Polling is one callback rescheduled with ``call_soon``: while a callback is ready the loop
    checks its sockets without blocking, so a request that arrives meanwhile is read at once.

    Args:
        window: seconds to go on polling after the last request (> 0).
    """

    def __init__(self, window: float) -> None:
        if window <= 0:
            raise ValueError(f"a busy-poll window must be positive, not {window}")
        self.window = window
        self.polls = 0
        """Polls so far (one per loop iteration while polling)."""
        self._touched = False
        self._until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    @property
    def polling(self) -> bool:
        """Whether the loop is being kept awake now."""
        return self._loop is not None

    def touch(self) -> None:
        """A request arrived: poll until ``window`` seconds after it (from the loop running
        this call; cheap enough for every request)."""
        self._touched = True
        if self._loop is None and not self._stopped:
            self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._poll)

    def stop(self) -> None:
        """Poll no more (shutdown): the loop may sleep again after its next iteration."""
        self._stopped = True

    def _poll(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            self._loop = None
            return
        self.polls += 1
        now = time.monotonic()
        if self._touched:
            self._touched = False
            self._until = now + self.window
        elif now >= self._until or self._stopped:
            self._loop = None  # idle long enough: sleep until the next request wakes the loop
            return
        loop.call_soon(self._poll)
