"""The management API over its real operations, in-process: a raw MQTT client is listed,
read, sent a message through the API and kicked; retained messages are listed, read
and deleted; /metrics is Prometheus text that prometheus_client parses."""

import trio
from prometheus_client.parser import text_string_to_metric_families

from polybroker.config import ManagementConfig
from polybroker.management.api import ManagementApi
from polybroker.protocols.mqtt import Publish
from polybroker.server import open_broker

from .httpclient import http
from .rawclient import RawClient

BEARER = {"authorization": "Bearer t"}


def config(serve_config, tmp_path):
    (tmp_path / "tokens").write_text("t\n")
    return serve_config("mqtt://127.0.0.1:0", "http://127.0.0.1:0",
                        management=ManagementConfig(token_file=tmp_path / "tokens"))


async def test_a_client_seen_sent_to_and_kicked_through_the_api(serve_config, tmp_path):
    async with open_broker(config(serve_config, tmp_path), ManagementApi) as running:
        port = running.port("http")
        client = RawClient(await trio.open_tcp_stream("127.0.0.1", running.port("mqtt")))
        await client.connect("dev/1")
        await client.subscribe("sensors/#", qos=1)

        page = (await http(port, "GET", "/api/v1/clients?protocol=mqtt", headers=BEARER)).json()
        assert [item["id"] for item in page["items"]] == ["dev/1"]
        detail = (await http(port, "GET", "/api/v1/clients/dev%2F1", headers=BEARER)).json()
        assert detail["subscriptions"] == [{"filter": "sensors/#", "qos": 1}]

        reply = await http(port, "POST", "/api/v1/publish", {
            "topic": "sensors/t1", "payload": "21.5", "qos": 1, "retain": True}, BEARER)
        assert reply.status == 200 and reply.json()["matched"] == 1
        received = await client.receive()
        assert isinstance(received, Publish) and received.payload == b"21.5"

        listed = (await http(port, "GET", "/api/v1/retained?filter=sensors/%2B",
                             headers=BEARER)).json()
        assert [m["topic"] for m in listed["items"]] == ["sensors/t1"]
        one = (await http(port, "GET", "/api/v1/retained/sensors/t1", headers=BEARER)).json()
        assert one["payload"] == "21.5"
        assert (await http(port, "DELETE", "/api/v1/retained/sensors/t1",
                           headers=BEARER)).status == 200
        gone = await http(port, "GET", "/api/v1/retained/sensors/t1", headers=BEARER)
        assert gone.status == 404
        assert gone.json() == {"error": "no retained message on 'sensors/t1'"}

        kicked = await http(port, "DELETE", "/api/v1/clients/dev%2F1", headers=BEARER)
        assert kicked.json()["disconnected"] is True
        await client.receive_until_closed()
        assert (await http(port, "GET", "/api/v1/queues/none", headers=BEARER)).status == 404


async def test_listeners_overview_and_metrics(serve_config, tmp_path):
    async with open_broker(config(serve_config, tmp_path), ManagementApi) as running:
        port = running.port("http")
        listeners = (await http(port, "GET", "/api/v1/listeners", headers=BEARER)).json()
        assert [lst["url"] for lst in listeners] == [lc.url for lc in running.listeners]
        assert listeners[1]["url"] == f"http://127.0.0.1:{port}"
        overview = (await http(port, "GET", "/api/v1/overview", headers=BEARER)).json()
        assert overview["connections"] == 0
        metrics = await http(port, "GET", "/metrics")
        assert metrics.status == 200
        assert metrics.header("content-type").startswith("text/plain; version=0.0.4")
        names = {family.name for family in text_string_to_metric_families(metrics.body.decode())}
        assert "polybroker_connections" in names
        open_metrics = await http(port, "GET", "/metrics",
                                  headers={"accept": "application/openmetrics-text"})
        assert open_metrics.header("content-type").startswith("application/openmetrics-text")
