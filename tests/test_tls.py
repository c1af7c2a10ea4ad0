"""TLS contexts from the configuration, reloading, and the client's identity."""

import logging
import shutil
import ssl
from dataclasses import replace

import pytest

from polybroker.config import ConfigError, TLSConfig
from polybroker.transports.tls import ReloadableContext, build_context, certificate_identity


def tls_config(certs_dir, **overrides) -> TLSConfig:
    return replace(TLSConfig(certfile=certs_dir / "server.crt", keyfile=certs_dir / "server.key"),
                   **overrides)


def test_context_follows_the_settings(certs_dir):
    plain = build_context(tls_config(certs_dir))
    assert plain.minimum_version == ssl.TLSVersion.TLSv1_2
    assert plain.verify_mode == ssl.CERT_NONE
    optional = build_context(tls_config(certs_dir, cafile=certs_dir / "ca.crt"))
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    required = build_context(tls_config(certs_dir, cafile=certs_dir / "ca.crt",
                                        require_certificate=True, tls_version="1.3"))
    assert required.verify_mode == ssl.CERT_REQUIRED
    assert required.minimum_version == ssl.TLSVersion.TLSv1_3
    ciphers = build_context(tls_config(certs_dir, ciphers="ECDHE+AESGCM"))
    assert all("GCM" in c["name"] for c in ciphers.get_ciphers() if c["protocol"] == "TLSv1.2")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"certfile": "missing.crt"}, "certfile / keyfile missing.crt / .*: cannot load"),
        ({"keyfile": "ca.key"}, "certfile / keyfile .*server.crt / .*ca.key: cannot load"),
        ({"cafile": "missing-ca.crt"}, "cafile missing-ca.crt: cannot load"),
        ({"ciphers": "NOT-A-CIPHER"}, "ciphers 'NOT-A-CIPHER': "),
    ],
)
def test_unusable_settings_name_the_key(certs_dir, overrides, message):
    values = {k: (v if k == "ciphers" or "missing" in v else certs_dir / v)
              for k, v in overrides.items()}
    with pytest.raises(ConfigError, match=message):
        build_context(tls_config(certs_dir, **values))


def test_reload_swaps_the_context_and_keeps_it_when_the_files_are_bad(tmp_path, certs_dir,
                                                                      caplog):
    for name in ("server.crt", "server.key"):
        shutil.copy(certs_dir / name, tmp_path / name)
    holder = ReloadableContext(tls_config(tmp_path), "mqtt+tls://x:1")
    first = holder.context
    caplog.set_level(logging.INFO, "polybroker.tls")
    assert holder.reload()
    assert holder.context is not first
    assert "mqtt+tls://x:1: certificates reloaded" in caplog.text
    second = holder.context
    (tmp_path / "server.key").write_text("not a key")
    assert not holder.reload()
    assert holder.context is second
    assert "certificates not reloaded, keeping the previous ones" in caplog.text


@pytest.mark.parametrize(
    ("cert", "identity"),
    [
        (None, None),
        ({}, None),
        ({"subject": ((("organizationName", "o"),), (("commonName", "sensor-1"),))}, "sensor-1"),
        ({"subject": ((("organizationName", "o"),),),
          "subjectAltName": (("DirName", "x"), ("email", "dev@example.com"))}, "dev@example.com"),
    ],
)
def test_identity_is_the_common_name_else_a_subject_alternative_name(cert, identity):
    assert certificate_identity(cert) == identity
