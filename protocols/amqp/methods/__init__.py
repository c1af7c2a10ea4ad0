"""AMQP 0-9-1 methods as frozen dataclasses, with the encoding of their arguments.

One class per method of the 0-9-1 grammar with RabbitMQ's extensions (basic.nack,
confirm.*, exchange.bind/unbind, connection.blocked, the auto_delete and internal
bits of exchange.declare, basic.cancel from the server). Each class carries
``CLASS_ID``, ``METHOD_ID`` and ``NAME`` ("queue.declare"), whether a content
follows it (``HAS_CONTENT``), and who may send it (``FROM_CLIENT``, ``FROM_SERVER``).

Argument types map to Python as: octet, short, long, longlong -> int; bit -> bool;
shortstr -> str (UTF-8); longstr -> bytes; table -> dict (see ``fields``). Reserved
arguments (the old ticket, out-of-band, known-hosts, insist...) are not fields: they
are written as zero or empty and skipped when read.

The classes are defined by AMQP class: ``connection``, ``channel``, ``exchange``,
``queue``, ``basic`` and ``confirm_tx`` (confirm and tx), on the ``Method`` base and
registry of ``base``; ``arguments`` encodes and decodes their arguments. Importing this
package registers every method in ``METHODS``, in that order.
"""

# isort: off
# In the specification's order: importing a module registers its methods in METHODS.
from .base import (
    BIT,
    LONG,
    LONGLONG,
    LONGSTR,
    METHODS,
    NOT_IMPLEMENTED,
    OCTET,
    R_BIT,
    R_LONGSTR,
    R_SHORT,
    R_SHORTSTR,
    SHORT,
    SHORTSTR,
    TABLE,
    Method,
)
from .connection import (
    ConnectionBlocked,
    ConnectionClose,
    ConnectionCloseOk,
    ConnectionOpen,
    ConnectionOpenOk,
    ConnectionSecure,
    ConnectionSecureOk,
    ConnectionStart,
    ConnectionStartOk,
    ConnectionTune,
    ConnectionTuneOk,
    ConnectionUnblocked,
)
from .channel import (
    ChannelClose,
    ChannelCloseOk,
    ChannelFlow,
    ChannelFlowOk,
    ChannelOpen,
    ChannelOpenOk,
)
from .exchange import (
    ExchangeBind,
    ExchangeBindOk,
    ExchangeDeclare,
    ExchangeDeclareOk,
    ExchangeDelete,
    ExchangeDeleteOk,
    ExchangeUnbind,
    ExchangeUnbindOk,
)
from .queue import (
    QueueBind,
    QueueBindOk,
    QueueDeclare,
    QueueDeclareOk,
    QueueDelete,
    QueueDeleteOk,
    QueuePurge,
    QueuePurgeOk,
    QueueUnbind,
    QueueUnbindOk,
)
from .basic import (
    BasicAck,
    BasicCancel,
    BasicCancelOk,
    BasicConsume,
    BasicConsumeOk,
    BasicDeliver,
    BasicGet,
    BasicGetEmpty,
    BasicGetOk,
    BasicNack,
    BasicPublish,
    BasicQos,
    BasicQosOk,
    BasicRecover,
    BasicRecoverAsync,
    BasicRecoverOk,
    BasicReject,
    BasicReturn,
)
from .confirm_tx import (
    ConfirmSelect,
    ConfirmSelectOk,
    TxCommit,
    TxCommitOk,
    TxRollback,
    TxRollbackOk,
    TxSelect,
    TxSelectOk,
)
from .arguments import (
    decode_arguments,
    encode_arguments,
)
# isort: on

__all__ = [
    "BIT",
    "LONG",
    "LONGLONG",
    "LONGSTR",
    "METHODS",
    "NOT_IMPLEMENTED",
    "OCTET",
    "R_BIT",
    "R_LONGSTR",
    "R_SHORT",
    "R_SHORTSTR",
    "SHORT",
    "SHORTSTR",
    "TABLE",
    "BasicAck",
    "BasicCancel",
    "BasicCancelOk",
    "BasicConsume",
    "BasicConsumeOk",
    "BasicDeliver",
    "BasicGet",
    "BasicGetEmpty",
    "BasicGetOk",
    "BasicNack",
    "BasicPublish",
    "BasicQos",
    "BasicQosOk",
    "BasicRecover",
    "BasicRecoverAsync",
    "BasicRecoverOk",
    "BasicReject",
    "BasicReturn",
    "ChannelClose",
    "ChannelCloseOk",
    "ChannelFlow",
    "ChannelFlowOk",
    "ChannelOpen",
    "ChannelOpenOk",
    "ConfirmSelect",
    "ConfirmSelectOk",
    "ConnectionBlocked",
    "ConnectionClose",
    "ConnectionCloseOk",
    "ConnectionOpen",
    "ConnectionOpenOk",
    "ConnectionSecure",
    "ConnectionSecureOk",
    "ConnectionStart",
    "ConnectionStartOk",
    "ConnectionTune",
    "ConnectionTuneOk",
    "ConnectionUnblocked",
    "ExchangeBind",
    "ExchangeBindOk",
    "ExchangeDeclare",
    "ExchangeDeclareOk",
    "ExchangeDelete",
    "ExchangeDeleteOk",
    "ExchangeUnbind",
    "ExchangeUnbindOk",
    "Method",
    "QueueBind",
    "QueueBindOk",
    "QueueDeclare",
    "QueueDeclareOk",
    "QueueDelete",
    "QueueDeleteOk",
    "QueuePurge",
    "QueuePurgeOk",
    "QueueUnbind",
    "QueueUnbindOk",
    "TxCommit",
    "TxCommitOk",
    "TxRollback",
    "TxRollbackOk",
    "TxSelect",
    "TxSelectOk",
    "decode_arguments",
    "encode_arguments",
]
