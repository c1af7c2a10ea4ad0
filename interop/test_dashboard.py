"""The web dashboard in headless Chromium (Debian's, driven by Playwright) against a real
``polybroker serve``: nothing before login; the message rate rising on the overview while
paho-mqtt publishes; a client found, disconnected and gone; a queue filled by pika,
purged and deleted; a test message published from the Topics page; logout. Each page is
saved as a screenshot at 1280x800 and at 390x844 in the test's folder, and at 390 px wide
no page is wider than the screen. Also: a wheel of the package carries the dashboard's files.
"""

import re
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from .amqp_support import pika_params
from .brokerproc import BrokerProcess
from .clients import WAIT
from .conftest import require_tool
from .test_paho_mqtt import PahoClient

playwright = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
PUBLISH_MAX = 20_000  # the load loop's bounds: messages and seconds
PUBLISH_SECONDS = 30.0
MS = WAIT * 1000  # Playwright's waits are in milliseconds
# What sticks out on the right, to name in a failure.
WIDE_ELEMENTS = """[...document.querySelectorAll("body *")]
    .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
    .map((e) => `${e.tagName}#${e.id}.${e.className}`).slice(0, 8).join(" ")"""


def start_broker(tmp_path: Path, management: str = "") -> BrokerProcess:
    passwords = tmp_path / "passwords"
    for user, password in (("alice", "secret"), ("guest", "guest")):
        subprocess.run([sys.executable, "-m", "polybroker", "passwd", "--password-stdin",
                        str(passwords), user], input=password + "\n", text=True, check=True,
                       capture_output=True, timeout=WAIT)
    config = tmp_path / "broker.toml"
    config.write_text(
        '[broker]\nsys_interval = 0\n'
        f'[auth]\npassword_file = "{passwords}"\nfailure_delay = 0\n'
        f'[management]\nadmins = ["alice"]\n{management}')
    return BrokerProcess(tmp_path / "data", "--config", str(config),
                         listen=("mqtt://127.0.0.1:0", "amqp://127.0.0.1:0",
                                 "http://127.0.0.1:0"))


@pytest.fixture
def broker(tmp_path) -> Iterator[BrokerProcess]:
    proc = start_broker(tmp_path)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def page(tmp_path):
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=require_tool("chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport=dict(zip(("width", "height"), SIZES["desktop"],
                                                      strict=True)))
            page.set_default_timeout(MS)
            yield page
        finally:
            browser.close()


class Publisher(threading.Thread):
    """paho-mqtt publishing QoS 0 messages until stopped (bounded in count and time)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.client = PahoClient(port, "dash-publisher")
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        deadline = time.monotonic() + PUBLISH_SECONDS
        while not self.stop.is_set() and self.sent < PUBLISH_MAX \
                and time.monotonic() < deadline:
            self.client.client.publish("dash/load", b"x" * 32, qos=0)
            self.sent += 1
            self.stop.wait(0.002)  # a steady rate, about 300 a second


def screenshots(page, tmp_path: Path, name: str, ready: str) -> None:
    """The current page at both sizes; at phone size nothing is wider than the screen."""
    for size, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_selector(ready)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        wide = page.evaluate(WIDE_ELEMENTS)
        assert overflow <= 0, f"{name} at {size}: {overflow}px too wide: {wide}"
        page.screenshot(path=str(tmp_path / f"{name}-{size}.png"), full_page=True)
    page.set_viewport_size(dict(zip(("width", "height"), SIZES["desktop"], strict=True)))


def rate_in(page) -> float:
    return float(page.inner_text("#rate-in").replace("k", "e3").replace("M", "e6"))


def test_dashboard_in_chromium(broker, page, tmp_path):
    url = f"http://127.0.0.1:{broker.port_of('http')}/"
    page.goto(url)
    page.wait_for_selector("#login")
    assert page.is_hidden("#page") and page.is_hidden("#top")
    assert page.inner_text("#page") == ""

    # A wrong password is refused and shows nothing.
    page.fill("input[name=user]", "alice")
    page.fill("input[name=password]", "wrong")
    page.click("#login button")
    page.wait_for_selector("#login-message:has-text('wrong user name or password')")
    assert page.is_hidden("#page")

    page.fill("input[name=password]", "secret")
    page.click("#login button")
    page.wait_for_selector("#user:has-text('alice')")
    page.wait_for_selector("#rate-in")
    assert page.inner_text("#version")
    assert "http://127.0.0.1:" in page.inner_text("main#page")  # the listeners table

    # The rate in rises while paho publishes; the chart draws it.
    page.wait_for_selector("svg.chart[data-points='2']")  # rates from three overviews
    assert rate_in(page) == 0
    publisher = Publisher(broker.port)
    publisher.client.connect()
    publisher.start()
    try:
        # The page's policy forbids eval, so no wait_for_function: a pattern of 50 or more.
        playwright.expect(page.locator("#rate-in")).to_have_text(
            re.compile(r"^(?:[5-9]\d(?:\.\d)?|\d{3,}|[\d.]+[kM])$"),
            timeout=PUBLISH_SECONDS * 1000)
        assert rate_in(page) >= 50
        page.wait_for_selector("svg.chart[data-points='6']")
        points = [p.split(",") for p in page.get_attribute("polyline.line.in", "points").split()]
        heights = [float(y) for _, y in points]
        assert max(heights) - min(heights) > 20  # a line that rises (y grows downwards)
        assert page.inner_text("#by-protocol").count("mqtt") == 1
        assert "tcp" in page.inner_text("#by-transport")
        screenshots(page, tmp_path, "overview", "#rate-in")
    finally:
        publisher.stop.set()
        publisher.join(WAIT)
        publisher.client.client.disconnect()
        publisher.client.client.loop_stop()
    assert publisher.sent > 0

    # Clients: paged, searched, opened, disconnected (after confirming), gone.
    crowd = [PahoClient(broker.port, f"dash-crowd-{n:02}") for n in range(21)]
    victim = PahoClient(broker.port, "dash-victim")
    for client in [*crowd, victim]:
        client.connect()
    victim.subscribe(("sensors/+/temp", 1))
    try:
        page.click("nav a[data-page=clients]")
        page.fill("#client-search", "dash-")
        page.press("#client-search", "Enter")
        page.wait_for_selector("#client-count:text-is('1\u201320 of 22')")
        assert page.locator("tr[data-client]").count() == 20
        page.click(".pager button:has-text('Next')")
        page.wait_for_selector("#client-count:text-is('21\u201322 of 22')")
        assert page.locator("tr[data-client]").count() == 2
        page.fill("#client-search", "victim")
        page.press("#client-search", "Enter")
        row = page.wait_for_selector("tr[data-client='dash-victim']")
        assert "mqtt" in row.inner_text() and "127.0.0.1" in row.inner_text()
        assert page.inner_text("#client-count") == "1\u20131 of 1"  # en dash
        screenshots(page, tmp_path, "clients", "tr[data-client='dash-victim']")
        page.click("tr[data-client='dash-victim'] a")
        page.wait_for_selector("#client-id:has-text('dash-victim')")
        assert "sensors/+/temp" in page.inner_text("main#page")
        screenshots(page, tmp_path, "client", "#disconnect")
        page.click("#disconnect")
        page.click("#confirm button[value=cancel]")  # a change of mind: still connected
        assert not victim.disconnected.is_set()
        page.click("#disconnect")
        page.click("#confirm-ok")
        page.wait_for_selector("#notice:has-text('Disconnected dash-victim')")
        assert victim.disconnected.wait(WAIT)
        page.fill("#client-search", "victim")
        page.press("#client-search", "Enter")
        page.wait_for_selector("#client-list:has-text('No clients match')")
    finally:
        for client in [*crowd, victim]:
            client.client.disconnect()
            client.client.loop_stop()

    # Queues: 25 messages put by pika, purged from the page.
    connection = pika.BlockingConnection(pika_params(broker.amqp_port))
    try:
        channel = connection.channel()
        channel.queue_declare("dash-jobs", durable=True)
        for n in range(25):
            channel.basic_publish("", "dash-jobs", f"job {n}".encode())
        assert channel.queue_declare("dash-jobs", passive=True).method.message_count == 25
        page.click("nav a[data-page=queues]")
        row = "tr[data-queue='dash-jobs']"
        page.wait_for_selector(f"{row} td:nth-child(2):text-is('25')")
        screenshots(page, tmp_path, "queues", row)
        page.click(f"{row} button.purge")
        assert "Purge the ready messages of dash-jobs?" in page.inner_text("#confirm-text")
        page.click("#confirm-ok")
        page.wait_for_selector("#notice:has-text('Purged 25 messages from dash-jobs')")
        page.wait_for_selector(f"{row} td:nth-child(2):text-is('0')")
        assert channel.queue_declare("dash-jobs", passive=True).method.message_count == 0
        page.click(f"{row} button.delete")
        page.click("#confirm-ok")
        page.wait_for_selector("#notice:has-text('Deleted dash-jobs')")
        page.wait_for_selector("#queue-list:has-text('No named queues')")
    finally:
        connection.close()

    # Topics: a subscription listed by filter; a retained test message published to it.
    listener = PahoClient(broker.port, "dash-listener")
    listener.connect()
    listener.subscribe(("dash/+", 0))
    try:
        page.click("nav a[data-page=topics]")
        page.wait_for_selector("#subscriptions td:text-is('dash/+')")
        page.fill("#publish-topic", "dash/test")
        page.fill("#publish-payload", "hello from the dashboard")
        page.check("#publish input[name=retain]")
        page.click("#publish button")
        page.wait_for_selector("#notice:has-text('Published to dash/test: 1 subscriber')")
        received = listener.messages.get(timeout=WAIT)
        assert (received.topic, received.payload) == ("dash/test", b"hello from the dashboard")
        page.fill("#topic-filter", "other/#")
        page.press("#topic-filter", "Enter")
        page.wait_for_selector("#subscriptions:has-text('No subscriptions match')")
        page.fill("#topic-filter", "dash/#")
        page.press("#topic-filter", "Enter")
        page.wait_for_selector("#retained td:text-is('dash/test')")
        assert "dash-listener" in page.inner_text("#subscriptions")
        screenshots(page, tmp_path, "topics", "#retained")
    finally:
        listener.client.disconnect()
        listener.client.loop_stop()

    page.click("#logout")
    page.wait_for_selector("#login-message:has-text('Logged out')")
    assert page.is_hidden("#page")
    page.reload()
    page.wait_for_selector("#login")
    assert page.is_hidden("#page")
    for name in ("overview", "clients", "client", "queues", "topics"):
        for size in SIZES:
            assert (tmp_path / f"{name}-{size}.png").stat().st_size > 1000


def log_in(page, broker: BrokerProcess) -> None:
    page.goto(f"http://127.0.0.1:{broker.port_of('http')}/")
    page.fill("input[name=user]", "alice")
    page.fill("input[name=password]", "secret")
    page.click("#login button")
    page.wait_for_selector("#user:has-text('alice')")


def test_an_idle_page_returns_to_the_login_form(page, tmp_path):
    idle = 10  # the shortest idle timeout there is
    broker = start_broker(tmp_path, f"dashboard_idle_timeout = {idle}\n")
    try:
        log_in(page, broker)
        page.wait_for_selector("#rate-in")
        page.wait_for_selector("#login-message:has-text('after a time without activity')",
                               timeout=(idle + WAIT) * 1000)
        assert page.is_hidden("#page") and page.inner_text("#page") == ""
        page.reload()
        page.wait_for_selector("#login")
        assert page.is_hidden("#page")
        broker.wait_for_log(r"dashboard session of 'alice' ended: idle")
    finally:
        broker.stop()


def test_a_wheel_carries_the_dashboard(tmp_path):
    """Built from a copy of the tree (the build writes only there)."""
    source = tmp_path / "src"
    subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], check=True,
                   capture_output=True, timeout=WAIT)
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard",
                            "-z"], check=True, capture_output=True, timeout=WAIT).stdout
    for name in files.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and not name.startswith(("interop/", "tests/")):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes(path.read_bytes())
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                          str(tmp_path / "dist"), str(source)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    wheel = next((tmp_path / "dist").glob("polybroker-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    folder = ROOT / "polybroker" / "management" / "dashboard"
    shipped = {f"polybroker/management/dashboard/{p.name}" for p in folder.iterdir()}
    assert {"polybroker/management/dashboard/index.html",
            "polybroker/management/dashboard/app.js"} <= shipped
    assert shipped <= names, shipped - names
