"""I/O steps every protocol adapter shares."""

import errno
import logging
import os

import trio

RECEIVE_SIZE = 65536  # one read takes whatever the peer sent, up to this

# What reading a socket closed under us raises (as trio's SocketStream maps them).
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}


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


def plain_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket under a plain TCP stream, which ``receive_socket`` reads directly;
    None for any other stream (TLS, WebSocket, in memory)."""
    if type(stream) is trio.SocketStream and os.name == "posix":
        return stream.socket
    return None


async def receive_socket(sock: trio.socket.SocketType) -> bytes:
    """``SocketStream.receive_some(RECEIVE_SIZE)`` on the stream's socket, with its
    semantics (a checkpoint, ClosedResourceError / BrokenResourceError, ``b""`` at end of
    stream) and a far shorter chain of coroutine frames. A connection waits here for most
    of its life, and each frame of that chain is kept for as long as it waits: with
    thousands of idle connections that is a good part of the memory each one takes."""
    await trio.lowlevel.checkpoint_if_cancelled()
    waited = False
    while True:
        fd = sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("this socket was already closed")
        try:
            data = os.read(fd, RECEIVE_SIZE)
        except BlockingIOError:
            data = None  # wait outside the handler, which would keep the exception alive
        except OSError as exc:
            if exc.errno in _CLOSED_ERRNOS:
                raise trio.ClosedResourceError("this socket was already closed") from None
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
        if data is None:
            await trio.lowlevel.wait_readable(sock)
            waited = True
            continue
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()  # a read that did not block
        return data


def send_socket(sock: trio.socket.SocketType, data: bytes) -> int:
    """Write what the socket takes of ``data`` now, without waiting; how many bytes.
    ClosedResourceError / BrokenResourceError as ``SocketStream.send_all`` raises them.
    For the caller that sends the rest with ``send_all`` (never both at once)."""
    fd = sock.fileno()
    if fd < 0:
        raise trio.ClosedResourceError("this socket was already closed")
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        if exc.errno in _CLOSED_ERRNOS:
            raise trio.ClosedResourceError("this socket was already closed") from None
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
