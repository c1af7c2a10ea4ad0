"""Shared subscriptions (MQTT 5.0 ``$share/{group}/{filter}``): a subscriber kind whose
members take turns, so each matching message goes to one member of the group."""

from typing import TYPE_CHECKING

from .message import Message

if TYPE_CHECKING:
    from .sessions import Session, SubscriptionOptions

SHARE_PREFIX = "$share/"


def split_shared_filter(topic_filter: str) -> tuple[str, str] | None:
    """``$share/g/a/+`` -> ``("g", "a/+")``; None for an ordinary filter.

    The codec has already checked that the group name is valid and non-empty.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None
    group, _, inner = topic_filter[len(SHARE_PREFIX):].partition("/")
    return group, inner


def is_valid_shared_filter(topic_filter: str) -> bool:
    """``$share/{name}/{filter}``: a name of one or more characters without ``+`` or ``#``,
    then a non-empty filter [MQTT-4.8.2-1, -2]."""
    parts = split_shared_filter(topic_filter)
    if parts is None:
        return True
    group, inner = parts
    return bool(group) and bool(inner) and "+" not in group and "#" not in group


class SharedGroup:
    """One shared subscription: the members of a group on one filter."""

    __slots__ = ("_turn", "backlog", "members", "name", "topic_filter")

    client_id = None  # never the publisher: No Local does not apply to shared subscriptions

    def __init__(self, name: str, topic_filter: str) -> None:
        self.name = name
        self.topic_filter = topic_filter
        self.members: dict[Session, SubscriptionOptions] = {}
        self._turn = 0
        self.backlog: Session | None = None  # the member the last message went to

    def __repr__(self) -> str:
        return f"SharedGroup({self.name!r}, {self.topic_filter!r})"

    def deliver(
        self, message: Message, qos: int, retain: bool, subscription_ids: tuple[int, ...] = ()
    ) -> int:
        """The router's subscriber interface: what the chosen member did with it."""
        member = self.choose()
        if member is None:
            return 0  # TAKEN: nobody to hold it for
        return self.deliver_to(member, message)

    def deliver_to(self, member: "Session", message: Message) -> int:
        options = self.members[member]
        ids = (options.subscription_id,) if options.subscription_id else ()
        retain = message.retain and options.retain_as_published
        self.backlog = member
        return member.deliver(message, min(options.qos, message.qos), retain, ids, group=self)

    def choose(self, exclude: "Session | None" = None) -> "Session | None":
        """The next member in turn, preferring members that are connected, and among those
        the ones with room: a message goes to a full member (whose overflow policy then
        applies) only when every member is full."""
        candidates = [m for m in self.members if m is not exclude]
        if not candidates:
            return None
        connected = [m for m in candidates if m.link is not None] or candidates
        with_room = [m for m in connected if m.has_room()] or connected
        self._turn += 1
        return with_room[self._turn % len(with_room)]
