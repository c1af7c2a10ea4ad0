"""AMQP 0-9-1 methods of the channel class (20): open, flow, close (``methods``)."""


from .base import BIT, R_LONGSTR, R_SHORTSTR, Method, _method
from .connection import _CLOSE

# --- channel (class 20) -------------------------------------------------------------------


@_method(20, 10, "channel.open", (None, R_SHORTSTR), client=True)
class ChannelOpen(Method):
    pass


@_method(20, 11, "channel.open-ok", (None, R_LONGSTR), server=True)
class ChannelOpenOk(Method):
    pass


@_method(20, 20, "channel.flow", ("active", BIT), client=True, server=True)
class ChannelFlow(Method):
    active: bool = True


@_method(20, 21, "channel.flow-ok", ("active", BIT), client=True, server=True)
class ChannelFlowOk(Method):
    active: bool = True


@_method(20, 40, "channel.close", *_CLOSE, client=True, server=True)
class ChannelClose(Method):
    reply_code: int = 200
    reply_text: str = ""
    class_id: int = 0
    method_id: int = 0


@_method(20, 41, "channel.close-ok", client=True, server=True)
class ChannelCloseOk(Method):
    pass
