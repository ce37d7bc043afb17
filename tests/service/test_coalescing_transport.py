"""service.coalescing_transport: writes of one loop iteration leave together and in order."""

import asyncio
import socket

import pytest

from service.coalescing_transport import CoalescingTransport


async def _exchange(writes: list[tuple[str, bytes]]) -> tuple[bytes, bytes]:
    """Apply ``writes`` ("part" or "whole", data) on a real socket: (what had arrived right
    after them, what had arrived after one loop iteration more)."""
    left, right = socket.socketpair()
    right.setblocking(False)
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, sock=left)
    coalescing = CoalescingTransport(transport)

    def received() -> bytes:
        try:
            return right.recv(1000)
        except BlockingIOError:
            return b""

    try:
        for kind, data in writes:
            if kind == "whole":
                coalescing.write_whole(data)
            else:
                coalescing.write(data)
        at_once = received()
        await asyncio.sleep(0.01)
        return at_once, received()
    finally:
        coalescing.close()
        right.close()


def test_a_whole_message_alone_is_sent_at_once() -> None:
    assert asyncio.run(_exchange([("whole", b"a")])) == (b"a", b"")


@pytest.mark.parametrize("last", ["part", "whole"])
def test_writes_of_one_iteration_leave_together_in_order(last: str) -> None:
    writes = [("part", b"a"), ("part", b"b"), (last, b"c")]
    assert asyncio.run(_exchange(writes)) == (b"", b"abc")
