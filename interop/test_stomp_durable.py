"""Durable queues end to end: stomp.py sends ``persistent:true`` messages with receipts to
the real broker, a consumer ACKs some (client-individual), the broker is killed with
SIGKILL and restarted on the same data directory; a new consumer gets exactly the
un-ACKed ones, in order, those handed out before flagged ``redelivered``. Every wait is
bounded and waits on a frame, a receipt or a log line."""

import signal

from .brokerproc import BrokerProcess
from .test_stomp_py import StompPy

MESSAGES = 20
PREFETCH = 8  # the first consumer holds this many at a time
ACKED = {0, 1, 3, 4, 6}  # of the first PREFETCH: ACKed before the kill


def start(data_dir) -> BrokerProcess:
    return BrokerProcess(data_dir, listen=("stomp://127.0.0.1:0",))


def test_persistent_messages_survive_sigkill_and_unacked_ones_come_back(tmp_path):
    data_dir = tmp_path / "data"
    clients: list[StompPy] = []
    proc = start(data_dir)
    try:
        producer = StompPy(proc.stomp_port)
        clients.append(producer)
        for i in range(MESSAGES):
            producer.send("/queue/jobs", f"job {i}", persistent="true")  # waits for RECEIPT
        producer.send("/queue/jobs", "not persistent")

        consumer = StompPy(proc.stomp_port)
        clients.append(consumer)
        consumer.subscribe("/queue/jobs", ack="client-individual",
                           prefetch_count=str(PREFETCH))
        frames = [consumer.next_message() for _ in range(PREFETCH)]
        assert [f.body for f in frames] == [f"job {i}" for i in range(PREFETCH)]
        # ACK in an order that leaves gaps; each ACK waits for its RECEIPT, and the
        # consumer's held messages stay at PREFETCH - acked + refill.
        for i in sorted(ACKED):
            consumer.settle(frames[i])
        # What the ACKs let the broker hand out next (prefetch refills): held, not ACKed.
        refills = [consumer.next_message() for _ in ACKED]
        handed_out = {int(f.body.split()[1]) for f in (*frames, *refills)} - ACKED
        assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        for client in clients:
            client.conn.transport.stop()
        proc.stop()

    proc = start(data_dir)
    try:
        restored = f"1 queues with {MESSAGES - len(ACKED)} persistent messages"
        assert any(restored in line for line in proc.lines), proc.lines  # before "ready"
        consumer = StompPy(proc.stomp_port)
        try:
            consumer.subscribe("/queue/jobs", ack="client-individual")
            expected = [i for i in range(MESSAGES) if i not in ACKED]
            got = [consumer.next_message() for _ in expected]
            assert [f.body for f in got] == [f"job {i}" for i in expected]
            redelivered = {int(f.body.split()[1]) for f in got
                           if f.headers.get("redelivered") == "true"}
            assert redelivered == handed_out
            for frame in got:
                consumer.settle(frame)
            assert consumer.messages_until_idle() == []  # nothing else: "not persistent" gone
        finally:
            consumer.stop()
    finally:
        assert proc.stop() == 0
