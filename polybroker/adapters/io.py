"""I/O steps every protocol adapter shares."""

import logging

import trio

RECEIVE_SIZE = 65536  # one read takes whatever the peer sent, up to this


async def receive_before(
    stream: trio.abc.Stream, deadline: float, name: str, log: logging.Logger
) -> bytes | None:
    """The next bytes from the peer; ``b""`` if ``deadline`` passed first; None (logged)
    if the peer closed the connection or it broke."""
    with trio.move_on_at(deadline):
        try:
            data = await stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("client %s: connection lost", name)
            return None
        if not data:
            log.info("client %s: closed the connection without DISCONNECT", name)
            return None
        return data
    return b""
