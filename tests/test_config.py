import logging
from pathlib import Path

import pytest

from polybroker.cli import _config_from_args, build_parser
from polybroker.config import (
    ConfigError,
    Limits,
    LogSettings,
    StompSettings,
    TLSConfig,
    config_from_dict,
    load_config,
    parse_listen_url,
)

CONFIG_DIR = Path(__file__).parent.parent / "config"


def test_example_config_loads_with_defaults():
    config = load_config(CONFIG_DIR / "polybroker.toml")
    assert [lc.url for lc in config.listeners] == ["mqtt://127.0.0.1:1883"]
    assert config.limits == Limits()
    assert config.data_dir == Path("data")
    assert config.stomp == StompSettings() and config.log == LogSettings()


def test_log_table_is_read_and_checked():
    config = config_from_dict({"log": {"file": "broker.log", "syslog": True}})
    assert config.log == LogSettings(file=Path("broker.log"), syslog=True)
    with pytest.raises(ConfigError, match=r"log\.syslog: expected true or false"):
        config_from_dict({"log": {"syslog": "yes"}})
    with pytest.raises(ConfigError, match=r"log\.level: unknown key"):
        config_from_dict({"log": {"level": "debug"}})


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
        ({"listener": [{"url": "ftp://x:1"}]}, "listener[0].url: unsupported scheme"),
        ({"listener": [{"url": "mqtt://x:99999"}]}, "listener[0].url: invalid port"),
        ({"listener": [{"port": 1883}]}, "listener[0].url: missing"),
        ({"listener": [{}]}, "listener[0].url: missing"),
        ({"listener": [{"url": "mqtt://x:1", "port": 2}]}, "listener[0].port: not allowed"),
        ({"listener": [{"url": "mqtt://x:1/mqtt"}]}, "listener[0].url: unexpected path"),
        ({"listener": [{"protocol": "ftp"}]}, "listener[0].protocol: must be one of"),
        ({"listener": [{"protocol": "amqp", "transport": "ws"}]},
         "listener[0].transport: must be one of tcp, tls for amqp"),
        ({"listener": [{"protocol": "mqtt", "port": 70000}]}, "listener[0].port: must be 0"),
        ({"listener": [{"protocol": "mqtt", "path": "/x"}]},
         "listener[0].path: only for ws and wss"),
        ({"listener": [{"url": "mqtt+ws://x:1", "path": "mqtt"}]},
         "listener[0].path: must start with /"),
        ({"listener": [{"url": "mqtt://x:1", "certfile": "c.pem"}]},
         "listener[0].certfile: only for tls and wss"),
        ({"listener": [{"url": "mqtt+tls://x:1"}]}, "listener[0].certfile: a TLS listener needs"),
        ({"listener": [{"url": "mqtt+tls://x:1", "certfile": ""}]},
         "listener[0].certfile: must not be empty"),
        ({"listener": [{"url": "mqtt+tls://x:1", "certfile": "c", "require_certificate": True}]},
         "listener[0].cafile: needed to verify client certificates"),
        ({"listener": [{"url": "mqtt+tls://x:1", "certfile": "c", "require_certificate": 1}]},
         "listener[0].require_certificate: expected true or false"),
        ({"listener": [{"url": "mqtt+wss://x:1", "certfile": "c", "cafile": "ca",
                        "use_identity_as_username": True}]},
         "listener[0].use_identity_as_username: needs require_certificate"),
        ({"listener": [{"url": "mqtt+tls://x:1", "certfile": "c", "tls_version": "1.1"}]},
         "listener[0].tls_version: must be one of 1.2, 1.3"),
        ({"listener": [{"url": "mqtt+ws://x:1", "allowed_origins": "https://a"}]},
         "listener[0].allowed_origins: expected a list"),
        ({"listener": [{"url": "mqtt+ws://x:1", "allowed_origins": ["a.example"]}]},
         "listener[0].allowed_origins: 'a.example' is not an origin"),
        ({"listener": [{"url": "mqtt://x:1", "max_connections": 0}]},
         "listener[0].max_connections: must be greater than 0"),
        ({"tls": {"certfile": 5}}, "tls.certfile: expected str"),
        ({"tls": {"cipher": "HIGH"}}, "tls.cipher: unknown key"),
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


TLS = TLSConfig(certfile=Path("server.crt"), keyfile=Path("server.key"))


@pytest.mark.parametrize(
    ("url", "protocol", "transport", "canonical"),
    [
        ("mqtt://h", "mqtt", "tcp", "mqtt://h:1883"),
        ("mqtts://h", "mqtt", "tls", "mqtt+tls://h:8883"),
        ("mqtt+tls://h", "mqtt", "tls", "mqtt+tls://h:8883"),
        ("mqtt+ws://h", "mqtt", "ws", "mqtt+ws://h:8083/mqtt"),
        ("MQTT+WSS://h:9/ws/mqtt", "mqtt", "wss", "mqtt+wss://h:9/ws/mqtt"),
        ("stomp://h", "stomp", "tcp", "stomp://h:61613"),
        ("stomp+tls://h", "stomp", "tls", "stomp+tls://h:61612"),
        ("stomp+ws://h", "stomp", "ws", "stomp+ws://h:61614/stomp"),
        ("stomp+wss://h", "stomp", "wss", "stomp+wss://h:61615/stomp"),
        ("amqp://h", "amqp", "tcp", "amqp://h:5672"),
        ("amqps://h", "amqp", "tls", "amqp+tls://h:5671"),
        ("auto://[::1]:0", "auto", "tcp", "auto://[::1]:0"),
        ("auto+tls://h", "auto", "tls", "auto+tls://h:8883"),
        ("auto+ws://h", "auto", "ws", "auto+ws://h:8083/"),
    ],
)
def test_listen_url_schemes(url, protocol, transport, canonical):
    listener = parse_listen_url(url, tls=TLS)
    assert (listener.protocol, listener.transport, listener.url) == (protocol, transport, canonical)
    assert (listener.tls is not None) == (transport in ("tls", "wss"))
    assert (listener.path is not None) == (transport in ("ws", "wss"))


def test_listen_url_for_tls_needs_a_certificate():
    with pytest.raises(ConfigError, match=r"--listen mqtts://h: certfile: a TLS listener needs"):
        parse_listen_url("mqtts://h")
    with pytest.raises(ConfigError, match="unsupported scheme in 'amqp\\+ws://h'"):
        parse_listen_url("amqp+ws://h")  # AMQP 0-9-1 has no WebSocket binding
    with pytest.raises(ConfigError, match="unexpected path"):
        parse_listen_url("mqtt://h/mqtt")


def test_listener_tables_take_defaults_from_the_tls_table():
    config = config_from_dict({
        "tls": {"certfile": "certs/server.crt", "keyfile": "certs/server.key",
                "cafile": "certs/ca.crt", "tls_version": "1.3"},
        "listener": [
            {"protocol": "mqtt", "transport": "tls", "port": 0, "max_connections": 5,
             "require_certificate": True, "use_identity_as_username": True},
            {"protocol": "stomp", "transport": "wss", "host": "::1", "path": "/ws",
             "certfile": "other.pem", "ciphers": "ECDHE+AESGCM",
             "allowed_origins": ["https://App.example:8443/", "http://localhost"]},
            {"protocol": "auto"},
        ],
    })
    mqtt, stomp, auto = config.listeners
    assert mqtt.url == "mqtt+tls://127.0.0.1:0"
    assert mqtt.max_connections == 5
    assert mqtt.tls == TLSConfig(
        certfile=Path("certs/server.crt"), keyfile=Path("certs/server.key"),
        cafile=Path("certs/ca.crt"), require_certificate=True, use_identity_as_username=True,
        tls_version="1.3",
    )
    assert stomp.url == "stomp+wss://[::1]:61615/ws"
    assert stomp.tls.certfile == Path("other.pem")
    assert stomp.tls.keyfile == Path("certs/server.key")
    assert stomp.tls.ciphers == "ECDHE+AESGCM"
    assert stomp.allowed_origins == ("https://app.example:8443", "http://localhost")
    assert auto.url == "auto://127.0.0.1:1883"
    assert auto.tls is None and auto.max_connections is None


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


def test_mqtt_table_and_new_limits_are_read():
    config = config_from_dict({
        "mqtt": {"response_information": "reply/", "scram_users_file": "users"},
        "limits": {"max_subscriptions_per_client": 0, "max_keepalive": 30},
    })
    assert config.mqtt.response_information == "reply/"
    assert config.mqtt.scram_users_file == Path("users")
    assert config.limits.max_keepalive == 30


def test_max_keepalive_defaults_to_65535_and_accepts_0_and_no_more():
    assert Limits().max_keepalive == 65535
    assert config_from_dict({"limits": {"max_keepalive": 0}}).limits.max_keepalive == 0
    with pytest.raises(ConfigError, match=r"limits\.max_keepalive: at most 65535"):
        config_from_dict({"limits": {"max_keepalive": 65536}})


def test_server_keep_alive_is_read_as_max_keepalive_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, "polybroker.config"):
        config = config_from_dict({"limits": {"server_keep_alive": 45}})
    assert config.limits.max_keepalive == 45
    assert "limits.server_keep_alive is deprecated: read as max_keepalive = 45" in caplog.text
    with pytest.raises(ConfigError, match=r"server_keep_alive: deprecated"):
        config_from_dict({"limits": {"server_keep_alive": 45, "max_keepalive": 60}})


def test_unknown_mqtt_key_is_rejected():
    with pytest.raises(ConfigError, match=r"mqtt\.scram_file: unknown key"):
        config_from_dict({"mqtt": {"scram_file": "x"}})


def test_cli_tls_flags_apply_to_listen_urls_over_the_tls_table(tmp_path):
    config_file = tmp_path / "broker.toml"
    config_file.write_text('[tls]\ncertfile = "a.crt"\nkeyfile = "a.key"\ncafile = "ca.crt"\n')
    args = build_parser().parse_args([
        "serve", "--config", str(config_file), "--listen", "mqtts://127.0.0.1:0",
        "--listen", "mqtt+ws://127.0.0.1:0/ws", "--certfile", "b.crt", "--require-certificate",
    ])
    tls_listener, ws_listener = _config_from_args(args).listeners
    assert tls_listener.tls == TLSConfig(certfile=Path("b.crt"), keyfile=Path("a.key"),
                                         cafile=Path("ca.crt"), require_certificate=True)
    assert ws_listener.tls is None and ws_listener.path == "/ws"


def test_cli_tls_listen_without_a_certificate_names_the_url():
    args = build_parser().parse_args(["serve", "--listen", "mqtt+wss://127.0.0.1:0"])
    with pytest.raises(ConfigError, match=r"--listen mqtt\+wss://127.0.0.1:0: certfile"):
        _config_from_args(args)


def test_cli_tls_flags_without_listen_are_an_error():
    args = build_parser().parse_args(["serve", "--certfile", "a.crt"])
    with pytest.raises(ConfigError, match="apply to --listen URLs"):
        _config_from_args(args)


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
