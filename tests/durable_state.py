"""What a restart must give back, as a comparable value."""

from polybroker.broker import Broker


def persistent_state(broker: Broker) -> dict:
    """What must survive a restart: persistent sessions with their subscriptions, stored
    messages (by store id, the order they were recorded in) and inbound QoS 2 ids, and the
    retained messages."""
    sessions = {}
    for client_id, session in broker.sessions.items():
        if session.expiry_interval == 0:
            continue
        stored = {}
        for pid, delivery in session.inflight.items():
            if delivery.released:
                stored[delivery.store_id] = ("released", pid)
            elif delivery.store_id:
                stored[delivery.store_id] = _delivery(broker, delivery, pid)
        for delivery in session.queued:
            if delivery.qos:
                stored[delivery.store_id] = _delivery(broker, delivery, None)
        sessions[client_id] = (
            session.expiry_interval, dict(session.subscriptions), sorted(stored.items()),
            sorted(session.inbound_qos2),
        )
    everything = broker.retained.match("#") + broker.retained.match("$SYS/#")
    retained = sorted((m.topic, m.payload, m.qos) for m in everything)
    return {"sessions": sessions, "retained": retained}


def _delivery(broker, delivery, pid):
    m = delivery.message
    # QoS 1 messages sent from the queue do not record their packet id (a resend with a new
    # id is fine at QoS 1); QoS 2 ones must.
    group = delivery.group and (delivery.group.name, delivery.group.topic_filter)
    if group not in broker.shared_groups:
        group = None  # no such shared subscription any more: a restart finds no group
    return (m.topic, m.payload, delivery.qos, delivery.retain, delivery.subscription_ids,
            group, pid if delivery.qos == 2 else None)
