"""STOMP transactions: BEGIN, COMMIT, ABORT, and the SEND, ACK and NACK frames they
buffer until COMMIT, bounded."""

from collections.abc import Callable

from ...protocols.stomp import Frame
from .state import ClientState, Transaction, error

MAX_TRANSACTIONS = 100  # open at once, per connection
MAX_TRANSACTION_FRAMES = 10_000  # per transaction
MAX_TRANSACTION_BYTES = 64 * 1024 * 1024  # SEND bodies buffered by open transactions


class Transactions(ClientState):
    """The open transactions of one connection."""

    def _in_transaction(self, frame: Frame, action: Callable[[], None]) -> bool:
        """Buffer ``action`` in the frame's transaction; False if it names none."""
        name = frame.get("transaction")
        if name is None:
            return False
        transaction = self._transactions.get(name)
        if transaction is None:
            raise error(frame, f"{frame.command} in unknown transaction {name!r} [BEGIN]")
        size = len(frame.body)
        if (len(transaction.actions) >= MAX_TRANSACTION_FRAMES
                or self._transaction_bytes + size > MAX_TRANSACTION_BYTES):
            raise error(frame, f"transaction {name!r} too large [Size Limits]")
        transaction.actions.append(action)
        transaction.size += size
        self._transaction_bytes += size
        return True

    def _on_begin(self, frame: Frame) -> bool:
        name = frame.get("transaction", "")  # required by the codec
        if name in self._transactions:
            raise error(frame, f"transaction {name!r} already begun [BEGIN]")
        if len(self._transactions) >= MAX_TRANSACTIONS:
            raise error(frame, f"more than {MAX_TRANSACTIONS} open transactions")
        self._transactions[name] = Transaction()
        return True

    def _on_commit(self, frame: Frame) -> bool:
        for action in self._end_transaction(frame).actions:
            action()
        return True

    def _on_abort(self, frame: Frame) -> bool:
        self._end_transaction(frame)
        return True

    def _end_transaction(self, frame: Frame) -> Transaction:
        name = frame.get("transaction", "")  # required by the codec
        transaction = self._transactions.pop(name, None)
        if transaction is None:
            raise error(frame, f"{frame.command} of unknown transaction {name!r} "
                                f"[{frame.command}]")
        self._transaction_bytes -= transaction.size
        return transaction

