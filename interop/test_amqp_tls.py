"""pika over ``amqps://``: certificates from ``polybroker certs``, the real broker."""

import ssl

import pika
import pytest

from .amqp_support import pika_params
from .brokerproc import BrokerProcess
from .test_tls import polybroker_certs, server_flags


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("amqps") / "certs"
    polybroker_certs(directory)
    return directory


def test_pika_over_amqps_verifying_the_broker(tmp_path, certs):
    proc = BrokerProcess(tmp_path / "data", *server_flags(certs),
                         listen=("amqps://127.0.0.1:0",))
    try:
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        params = pika_params(proc.port_of("amqp+tls"),
                             ssl_options=pika.SSLOptions(context, "localhost"))
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            channel.queue_declare("secure")
            channel.basic_publish("", "secure", b"over TLS")
            assert channel.basic_get("secure", auto_ack=True)[2] == b"over TLS"
        finally:
            connection.close()
    finally:
        proc.stop()
