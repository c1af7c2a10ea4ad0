"""The real ``polybroker`` command: start, announce its port, stop on signals."""

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from polybroker import __version__

from .brokerproc import BrokerProcess


def test_version():
    out = subprocess.run([sys.executable, "-m", "polybroker", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"polybroker {__version__}"


def test_help_lists_serve():
    out = subprocess.run([sys.executable, "-m", "polybroker", "--help"],
                         capture_output=True, text=True, check=True)
    assert "serve" in out.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_writes_port_file_and_stops_cleanly_on_signal(tmp_path, sig):
    port_file = tmp_path / "ports"
    proc = BrokerProcess(tmp_path / "data", "--listen", "mqtt://[::1]:0",
                         "--port-file", str(port_file))
    try:  # BrokerProcess returns once the broker has logged "ready"
        urls = port_file.read_text().split()
        assert urls[0] == f"mqtt://127.0.0.1:{proc.port}"
        assert urls[1].startswith("mqtt://[::1]:") and not urls[1].endswith(":0")
        assert (tmp_path / "data").is_dir()
    finally:
        assert proc.stop(sig) == 0
    assert proc.lines[-1].endswith("stopped")


def test_bad_config_exits_with_message(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[limits]\nmax_inflight = 3\n')
    out = subprocess.run([sys.executable, "-m", "polybroker", "serve", "--config", str(config)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "limits.max_inflight: unknown key" in out.stderr


def serve_until_exit(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polybroker", "serve", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True, text=True, timeout=30,
    )


def test_listener_that_cannot_start_is_refused_at_start_up(tmp_path):
    out = serve_until_exit(tmp_path, "--listen", "mqtts://127.0.0.1:0", "--certfile",
                           str(tmp_path / "missing.crt"), "--keyfile",
                           str(tmp_path / "missing.key"))
    assert out.returncode == 2
    assert "cannot start: listener mqtt+tls://127.0.0.1:0: certfile" in out.stderr
    assert "Traceback" not in out.stderr


def test_address_in_use_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = serve_until_exit(tmp_path, "--listen", "stomp://127.0.0.1:0",
                               "--listen", f"mqtt://127.0.0.1:{port}")
    assert out.returncode == 1
    assert out.stderr.strip().endswith(
        f"cannot start: listener mqtt://127.0.0.1:{port}: Address already in use")
    assert len(out.stderr.splitlines()) == 1


def test_data_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "data").write_text("")
    out = serve_until_exit(tmp_path, "--listen", "mqtt://127.0.0.1:0")
    assert out.returncode == 1
    assert out.stderr.strip().endswith(
        f"cannot start: data directory {tmp_path / 'data'}: not a directory")
    assert len(out.stderr.splitlines()) == 1


def test_second_broker_on_the_same_data_dir_is_one_line(tmp_path):
    first = BrokerProcess(tmp_path / "data")
    try:
        out = serve_until_exit(tmp_path, "--listen", "mqtt://127.0.0.1:0")
    finally:
        first.stop()
    assert out.returncode == 1
    assert out.stderr.strip().endswith(
        f"cannot start: data directory {tmp_path / 'data'}: in use by another broker "
        "(its store is locked)")
    assert "Traceback" not in out.stderr


def test_unwritable_data_dir_is_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o555)
    command = [sys.executable, "-m", "polybroker", "serve", "--data-dir", str(data),
               "--listen", "mqtt://127.0.0.1:0"]
    if os.geteuid() == 0:  # root writes anywhere: run the broker as nobody instead
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv")
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out.stderr
    # "not writable by this user", or "Permission denied" where its parents are closed too
    assert f"cannot start: data directory {data}: " in out.stderr
    assert len(out.stderr.splitlines()) == 1


def test_missing_certificate_file_is_named(tmp_path):
    out = serve_until_exit(tmp_path, "--listen", "mqtts://127.0.0.1:0",
                           "--certfile", str(tmp_path / "nope.crt"))
    assert out.returncode == 2
    assert f"certfile / keyfile {tmp_path / 'nope.crt'}: cannot load" in out.stderr


def test_bare_command_prints_help():
    out = subprocess.run([sys.executable, "-m", "polybroker"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert out.stdout.startswith("usage: polybroker")
    for command in ("serve", "certs", "passwd", "scram-password"):
        assert command in out.stdout
    assert out.stderr == ""


def test_serve_help_gives_the_defaults():
    out = subprocess.run([sys.executable, "-m", "polybroker", "serve", "--help"],
                         capture_output=True, text=True, check=True, timeout=30)
    text = " ".join(out.stdout.split())
    assert "else mqtt://127.0.0.1:1883)" in text
    assert "data_dir, else ./data)" in text
    assert "log_level, else info)" in text
    assert "--log-file FILE" in text and "--syslog" in text
