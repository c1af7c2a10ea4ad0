from pathlib import Path

import pytest

from polybroker.cli import _config_from_args, build_parser
from polybroker.config import ConfigError, Limits, config_from_dict, load_config, parse_listen_url

CONFIG_DIR = Path(__file__).parent.parent / "config"


def test_example_config_loads_with_defaults():
    config = load_config(CONFIG_DIR / "polybroker.toml")
    assert [lc.url for lc in config.listeners] == ["mqtt://127.0.0.1:1883"]
    assert config.limits == Limits()
    assert config.data_dir == Path("data")


def test_limits_and_listeners_are_read():
    config = config_from_dict({
        "listener": [{"url": "mqtt://0.0.0.0:1884"}, {"url": "mqtt://[::1]:0"}],
        "limits": {"max_inflight_messages": 5, "connect_timeout": 2},
    })
    assert [(lc.host, lc.port) for lc in config.listeners] == [("0.0.0.0", 1884), ("::1", 0)]
    assert config.listeners[1].url == "mqtt://[::1]:0"
    assert config.limits.max_inflight_messages == 5
    assert config.limits.connect_timeout == 2.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"listners": []}, "listners: unknown key"),
        ({"limits": {"max_inflight": 3}}, "limits.max_inflight: unknown key"),
        ({"limits": {"max_queued_messages": "10"}}, "limits.max_queued_messages: expected int"),
        ({"limits": {"max_queued_messages": True}}, "limits.max_queued_messages: expected int"),
        ({"limits": {"connect_timeout": 0}}, "limits.connect_timeout: must be greater than 0"),
        ({"limits": {"max_packet_size": 2**29}}, "limits.max_packet_size: at most"),
        ({"listener": [{"url": "http://x:1"}]}, "listener[0].url: unsupported scheme"),
        ({"listener": [{"url": "mqtt://x:99999"}]}, "listener[0].url: invalid port"),
        ({"listener": [{"port": 1883}]}, "listener[0].port: unknown key"),
        ({"listener": [{}]}, "listener[0].url: missing"),
        ({"log_level": "loud"}, "log_level: must be one of"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(raw, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(raw)


def test_invalid_toml_is_reported(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("limits = [")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


def test_listen_url_default_port():
    assert parse_listen_url("mqtt://localhost").port == 1883


def test_cli_listen_replaces_configured_listeners():
    args = build_parser().parse_args([
        "serve", "--config", str(CONFIG_DIR / "polybroker.toml"),
        "--listen", "mqtt://127.0.0.1:0", "--listen", "mqtt://[::1]:0", "--data-dir", "/tmp/x",
    ])
    config = _config_from_args(args)
    assert [lc.url for lc in config.listeners] == ["mqtt://127.0.0.1:0", "mqtt://[::1]:0"]
    assert config.data_dir == Path("/tmp/x")


def test_cli_defaults_to_loopback_1883():
    config = _config_from_args(build_parser().parse_args(["serve"]))
    assert [lc.url for lc in config.listeners] == ["mqtt://127.0.0.1:1883"]


def test_stomp_listener_scheme_and_default_port():
    listener = parse_listen_url("stomp://0.0.0.0")
    assert (listener.protocol, listener.port, listener.url) == ("stomp", 61613, "stomp://0.0.0.0:61613")


def test_stomp_settings_and_queue_length_are_read():
    config = config_from_dict({
        "stomp": {"heart_beat_send": 0, "heart_beat_receive": 2.5},
        "limits": {"max_queue_length": 10},
    })
    assert (config.stomp.heart_beat_send, config.stomp.heart_beat_receive) == (0.0, 2.5)
    assert config.limits.max_queue_length == 10


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"stomp": {"heartbeat": 1}}, "stomp.heartbeat: unknown key"),
        ({"stomp": {"heart_beat_send": -1}}, "stomp.heart_beat_send: must be between"),
        ({"stomp": {"heart_beat_receive": "10"}}, "stomp.heart_beat_receive: expected number"),
        ({"stomp": 3}, "stomp: must be a table"),
    ],
)
def test_bad_stomp_settings_are_rejected_naming_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)
