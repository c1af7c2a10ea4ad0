"""What an operator sees of a bridge: its state and counters."""

from dataclasses import dataclass


@dataclass
class BridgeStatus:
    """What an operator (metrics, ``$SYS``) sees of one bridge."""

    name: str
    state: str = "disconnected"  # "connecting", "connected", "disconnected"
    remote: str = ""  # the URL connected to, or being tried
    forwarded: int = 0  # messages the remote acknowledged (QoS 0: sent)
    received: int = 0  # messages from the remote published here
    dropped: int = 0  # refused by the remote, too large, or matching no rule any more
    reconnects: int = 0  # connections made after the first
    backlog_messages: int = 0  # waiting for the remote (queued and in flight)
    backlog_bytes: int = 0
    queue_full_drops: int = 0  # dropped because the backlog was full
    subacks: int = 0  # SUBACKs the remote sent for the bridge's subscriptions
