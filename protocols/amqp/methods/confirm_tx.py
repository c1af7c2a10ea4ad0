"""AMQP 0-9-1 methods of the confirm class (85) and the tx class (90) (``methods``)."""


from .base import BIT, Method, _method

# --- confirm (class 85) and tx (class 90) -------------------------------------------------


@_method(85, 10, "confirm.select", ("nowait", BIT), client=True)
class ConfirmSelect(Method):
    nowait: bool = False


@_method(85, 11, "confirm.select-ok", server=True)
class ConfirmSelectOk(Method):
    pass


@_method(90, 10, "tx.select", client=True)
class TxSelect(Method):
    pass


@_method(90, 11, "tx.select-ok", server=True)
class TxSelectOk(Method):
    pass


@_method(90, 20, "tx.commit", client=True)
class TxCommit(Method):
    pass


@_method(90, 21, "tx.commit-ok", server=True)
class TxCommitOk(Method):
    pass


@_method(90, 30, "tx.rollback", client=True)
class TxRollback(Method):
    pass


@_method(90, 31, "tx.rollback-ok", server=True)
class TxRollbackOk(Method):
    pass
