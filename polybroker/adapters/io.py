"""I/O steps every protocol adapter shares."""

import errno
import math
import os

import trio

RECEIVE_SIZE = 65536  # one read takes whatever the peer sent, up to this
# A lingering close reads and discards at most this long and this much.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024

# What reading a socket closed under us raises (as trio's SocketStream maps them).
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}


async def linger(stream: trio.abc.Stream, deadline: float = math.inf) -> None:
    """Let the peer read our last bytes (a DISCONNECT, ERROR or connection.close) before
    the caller closes ``stream``: closing a socket with unread input makes the kernel
    send a reset, and a peer that is still writing may then never read them.

    Half-close (``send_eof``: TCP FIN, a WebSocket close frame) where the stream can,
    then read and discard until the peer closes, for at most ``LINGER_SECONDS`` (and
    not past ``deadline``: ``Broker.linger_deadline``) and ``LINGER_BYTES``. A TLS
    stream cannot half-close without closing: it is only read (the peer closes once it
    has read our last word)."""
    with trio.move_on_at(min(trio.current_time() + LINGER_SECONDS, deadline)):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            discarded = 0
            while discarded < LINGER_BYTES:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                discarded += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass


def plain_socket_fd(stream: trio.abc.Stream) -> int | None:
    """The file descriptor of the socket under a plain TCP stream, which
    ``receive_socket`` and ``send_socket`` use directly; None for any other stream (TLS,
    WebSocket, in memory). The caller uses it only until it closes the stream: after
    that the number may name another file."""
    if type(stream) is trio.SocketStream and os.name == "posix":
        return stream.socket.fileno()
    return None


async def receive_socket(fd: int) -> bytes:
    """``SocketStream.receive_some(RECEIVE_SIZE)`` on the stream's socket (``fd`` from
    ``plain_socket_fd``), with its semantics (a checkpoint, ClosedResourceError /
    BrokenResourceError, ``b""`` at end of stream) and a far shorter chain of coroutine
    frames. A connection waits here for most of its life, and each frame of that chain
    is kept for as long as it waits: with thousands of idle connections that is a good
    part of the memory each one takes."""
    await trio.lowlevel.checkpoint_if_cancelled()
    waited = False
    while True:
        try:
            data = os.read(fd, RECEIVE_SIZE)
        except BlockingIOError:
            data = None  # wait outside the handler, which would keep the exception alive
        except OSError as exc:
            raise _stream_error(exc) from None
        if data is None:
            # Closing the stream (trio's notify_closing) wakes this with ClosedResourceError.
            await trio.lowlevel.wait_readable(fd)
            waited = True
            continue
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()  # a read that did not block
        return data


def send_socket(fd: int, data: bytes) -> int:
    """Write what the socket (``fd`` from ``plain_socket_fd``) takes of ``data`` now,
    without waiting; how many bytes. ClosedResourceError / BrokenResourceError as
    ``SocketStream.send_all`` raises them. For a caller that sends the rest with
    ``send_all`` (never both at once)."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise _stream_error(exc) from None


def _stream_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    error = trio.BrokenResourceError(f"socket connection broken: {exc}")
    error.__cause__ = exc
    return error
