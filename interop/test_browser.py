"""Real browser clients: mqtt.js and @stomp/stompjs in headless Chromium, over WebSocket.

A local HTTP server (127.0.0.1, port 0) serves ``browser/page.html`` and the npm
packages that ``browser/install.sh`` put in ``browser/node_modules``; the page reports
each step and what it received by POSTing JSON back to that server, which the test
waits on. Chromium runs in its own process group and is stopped with it.
"""

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .brokerproc import BrokerProcess
from .clients import WAIT, OutputProcess
from .conftest import require_tool

BROWSER_DIR = Path(__file__).parent / "browser"
# Chromium's first start on a fresh machine is slow; later waits use WAIT.
FIRST_REPORT_TIMEOUT = 40
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # Without these Chromium keeps calling home, and this machine's network refuses it.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0",  # console.log lines show in its output
)


class PageServer:
    """Serves the page and its scripts; collects what the page POSTs."""

    def __init__(self) -> None:
        self.reports: queue.Queue[dict] = queue.Queue()
        handler = partial(_PageHandler, self.reports, directory=str(BROWSER_DIR))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def next_report(self, client: str, timeout: float, describe) -> dict:
        """The page's next report from ``client`` (its other clients' are set aside)."""
        try:
            while (report := self.reports.get(timeout=timeout))["client"] != client:
                self.reports.put(report)
        except queue.Empty:
            raise AssertionError(f"no report from the {client} client:\n{describe()}") from None
        return report

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(WAIT)


class _PageHandler(SimpleHTTPRequestHandler):
    def __init__(self, reports: queue.Queue, *args, **kwargs) -> None:
        self.reports = reports
        super().__init__(*args, **kwargs)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.reports.put({"path": self.path, **json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the page's requests are not news


@contextlib.contextmanager
def chromium(url: str, profile: Path) -> Iterator[OutputProcess]:
    argv = [require_tool("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url]
    with OutputProcess(argv, start_new_session=True) as browser:
        try:
            yield browser
        finally:
            # The whole group: the browser and its renderer, GPU and zygote processes.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(browser.proc.pid, signal.SIGTERM)
            try:
                browser.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                os.killpg(browser.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def page_server() -> Iterator[PageServer]:
    if not (BROWSER_DIR / "node_modules" / "mqtt" / "dist" / "mqtt.min.js").exists():
        pytest.fail("npm packages for the browser test missing: run `sh interop/install-tools.sh`")
    server = PageServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def web_broker(tmp_path_factory, page_server) -> Iterator[BrokerProcess]:
    """TCP for mosquitto's clients, MQTT over WebSocket that admits only the page's
    origin, and an auto WebSocket port for the STOMP client."""
    directory = tmp_path_factory.mktemp("browser")
    config = directory / "broker.toml"
    config.write_text(
        '[[listener]]\nurl = "mqtt://127.0.0.1:0"\n\n'
        '[[listener]]\nurl = "mqtt+ws://127.0.0.1:0/mqtt"\n'
        f'allowed_origins = ["{page_server.origin}"]\n\n'
        '[[listener]]\nurl = "auto+ws://127.0.0.1:0/ws"\n'
    )
    broker = BrokerProcess(directory / "data", "--config", str(config), listen=())
    try:
        yield broker
    finally:
        broker.stop()


def mosquitto(tool: str, port: int, *args: str) -> list[str]:
    return [require_tool(tool), "-h", "127.0.0.1", "-p", str(port), *args]


def test_mqtt_js_in_chromium_subscribes_and_publishes(web_broker, page_server, tmp_path):
    ws_url = f"ws://127.0.0.1:{web_broker.port_of('mqtt+ws')}/mqtt"
    sub_argv = [require_tool("stdbuf"), "-oL",
                *mosquitto("mosquitto_sub", web_broker.port, "-d", "-v", "-t", "browser/from-page",
                           "-C", "1", "-W", str(FIRST_REPORT_TIMEOUT))]
    with OutputProcess(sub_argv) as tcp_sub:
        tcp_sub.wait_for_line("received SUBACK")
        with chromium(f"{page_server.origin}/page.html?mqtt={ws_url}", tmp_path) as browser:
            describe = lambda: "\n".join(browser.lines)  # noqa: E731
            report = page_server.next_report("mqtt", FIRST_REPORT_TIMEOUT, describe)
            assert report == {"path": "/event", "client": "mqtt", "event": "subscribed"}, report
            out = subprocess.run(
                mosquitto("mosquitto_pub", web_broker.port, "-q", "1", "-t", "browser/from-tcp",
                          "-m", "hello browser"),
                capture_output=True, text=True, timeout=WAIT)
            assert out.returncode == 0, out.stdout + out.stderr
            result = page_server.next_report("mqtt", WAIT, describe)
        assert result["path"] == "/result", result
        assert sorted(map(tuple, result["received"])) == [
            ("browser/from-page", "hello from chromium"), ("browser/from-tcp", "hello browser"),
        ]
        tcp_sub.wait_for_line(r"^browser/from-page hello from chromium$")
        assert tcp_sub.finish() == 0
    web_broker.wait_for_log(r"client browser-mqtt .*: connected")


def test_stompjs_in_chromium_over_the_auto_websocket_port(web_broker, page_server, tmp_path):
    ws_url = f"ws://127.0.0.1:{web_broker.port_of('auto+ws')}/ws"
    with chromium(f"{page_server.origin}/page.html?stomp={ws_url}", tmp_path) as browser:
        describe = lambda: "\n".join(browser.lines)  # noqa: E731
        result = page_server.next_report("stomp", FIRST_REPORT_TIMEOUT, describe)
    assert result.get("received") == [["/topic/browser", "hello from stompjs"]], result
    web_broker.wait_for_log(r": connected \(STOMP 1\.2")
