"""Durable broker state: which changes become which store records, and the replay at start-up.

What is durable: named queues that ever held a persistent message or that AMQP declared
durable (not exclusive), with the persistent messages in them (STOMP ``persistent:true``,
AMQP delivery_mode 2, MQTT QoS 1/2 routed in through ``amq.topic``) and whether each was
handed out; durable AMQP exchanges and the bindings between them and durable queues; persistent
sessions (session expiry interval above 0; MQTT 3.1.1 clean
session 0 never expires), their subscriptions, the QoS 1/2 messages queued or in flight for
them with their delivery state, the packet ids of inbound QoS 2 messages not yet released,
and retained messages. Sessions that end with their connection stay in memory only.

One record per state change, keyed so that a prefix scan finds each kind, and one client's
records sort together (``\\0`` cannot occur in MQTT strings [MQTT-1.5.4-2])::

    s/<client>               session: expiry interval, when it was disconnected
    u/<client>\\0<filter>     subscription and its options
    m/<client>\\0<id:8>       a message for the session with its delivery state: QoS,
                             packet id once sent, subscription ids, shared group; after
                             PUBREC only the packet id and "released" (the body is not
                             needed to finish with PUBREL/PUBCOMP)
    q2/<client>\\0<pid:2>     inbound QoS 2 packet id between PUBLISH and PUBREL
    r/<topic>                retained message
    Q/<queue>                a durable queue; its value: nothing more (STOMP: declared by
                             use) or its AMQP declaration (auto_delete, x-arguments)
    X/<exchange>             a durable AMQP exchange: type, auto_delete, internal, arguments
    B/<exchange>\\0<queue>\\0<key>\\0<arguments>
                             a binding between a durable exchange and a durable queue
    e/<queue>\\0<seq:8>      a persistent message in the queue; ``seq`` is its arrival
                             order in the queue, so a scan replays the queue in order
    e/<queue>\\0<seq:8>\\1   that message was handed out awaiting an acknowledgement:
                             after a restart it is ready again, flagged redelivered
    d/<id:8>                 a pending delayed message (``delayed``): its due time
                             (wall clock), its target (topic, queue, or exchange and
                             routing key) and the message; deleted when delivered or
                             cancelled, in one atomic group with what its delivery stored

QoS 2 exactly once, across crashes. Each packet below leaves only once the record before it
is durable (``durability`` holds the connection's writes until then), and a crash may fall
between any two writes (SIGKILL), or cut the log anywhere (a power cut):

    outbound (to a subscriber)    record written first                 then may leave
    queued                        m/ with packet id 0                  (nothing yet)
    sent                          m/ with its packet id                PUBLISH
    PUBREC received               m/ "released" with its packet id     PUBREL
    PUBCOMP received              m/ deleted                           (the id is free)

    inbound (from a publisher)    record written first                 then may leave
    PUBLISH received              ONE atomic group: the m/ records     PUBREC
                                  of every session it was routed to,
                                  and q2/ with its packet id
    PUBREL received               q2/ deleted                          PUBCOMP

So after a restart a subscriber gets, for a message it may have seen, either the PUBLISH
again with the same packet id and DUP (it never answered PUBREC) or only the PUBREL (it did):
never a second PUBLISH after a PUBREL, and never the same message under a new packet id.
That serves both ways a receiver may complete QoS 2 (the specification's figure 4.3):
delivering at PUBLISH and remembering the packet id until PUBREL, or delivering at PUBREL.
A publisher's resent PUBLISH finds its q2/ id and is acknowledged without being routed
again; the atomic group (``LogStore.begin_group``) is what stops a crash between the
subscribers' copies and that id from routing the resend a second time. A publisher whose
session ends with its connection (clean session) has no q2/ records: a resend after a new
connection is a new message [MQTT-3.1.2-6], as in every broker.

STOMP declares a queue by using it, so any name a client ever mentions (a typo, a reply
queue) would otherwise leave a record for good: a queue gets its ``Q/`` record when it
first holds a persistent message, and keeps it (an empty durable queue comes back empty)
until it is deleted. Non-persistent messages stay in memory only, as in ActiveMQ and
RabbitMQ.

An AMQP-declared durable queue gets its ``Q/`` record when declared (exclusive queues
never do). AMQP messages carry more fields (exchange, routing key, the raw content
properties, dead-letter history): they are stored in format 2, the same layout with a
second set of fields after the first (``encode_message``). Order of writes for AMQP: an
exchange's and a queue's record before their bindings', deleted after them.

(``q/`` is left for named queues and their messages, when they come.)

A message that goes to several persistent sessions is stored once per session: the record
is the message's encoding (made once and reused) plus 7 bytes of delivery state, and one
tombstone deletes it when that session acknowledges. Measured with a 64-byte payload and a
12-character client id (``interop/bench/durable_store.py``): 165 bytes on disk per stored
message, 47 more for its tombstone. Storing the body once (``b/<id>``, 145 bytes) with a
reference per session (62 bytes) would cost 207 bytes and two tombstones (81 bytes) for one
receiver, and only pays from two persistent receivers of the same message on (269 against
330 bytes); it also needs reference counts rebuilt at start-up and orphan bodies collected.
Persistent sessions usually receive their own messages (commands to a device, a backend's
share of telemetry), so one record per session it is.

Order of writes, so that a log cut anywhere (a torn tail) still replays to a state some
client could have seen: a session's record before its other records and deleted after
them; an inbound QoS 2 id in one atomic group with the messages its PUBLISH was routed
to (above); a queue's record
before its messages' records and deleted after them; a message's "handed out" mark
after its message and deleted before it. What may be
acknowledged and when is ``durability``'s business.

A failed write (``StoreFullError`` on a full disk, or another ``StoreError``) is logged
loudly and counted in ``failures``; the state stays in memory, so nothing is lost while
the broker runs. The request that caused the write ends in ``journal.StoreFull``
(``Broker.storing``), and its adapter refuses the client's message (MQTT 5.0 reason 0x97,
3.1.1: connection closed without acknowledgement; STOMP: ERROR).

Modules: ``records`` (the keys and the value codecs), ``journal`` (``StoreJournal``, the
core's ``journal.Journal`` over the store, and each persistent session's
``SessionJournal``), ``replay`` (``restore``: the state rebuilt at start-up).
``polybroker.durability`` opens the store, runs the group commit and compaction.
"""

import time  # the wall clock the records keep: tests move it through ``persistence.time``

from ..message import Message  # the type every record kind carries
from .journal import JournaledPacketIds, RestoreSummary, SessionJournal, StoreJournal
from .records import *  # noqa: F403  (the record kinds and codecs)
from .replay import bulk_load, restore

__all__ = [
    "JournaledPacketIds", "Message", "RestoreSummary", "SessionJournal", "StoreJournal",
    "bulk_load", "restore", "time",
]
