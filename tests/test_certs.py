"""`polybroker certs`: files, permissions, names, and chains that real TLS accepts."""

import contextlib
import ssl
import stat

import pytest
import trio
import trio.testing
from cryptography import x509

from polybroker.certs import CertError, issue_client, issue_server, load_or_create_ca
from polybroker.cli import main
from polybroker.transports.tls import certificate_identity


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_private_and_certificates_readable(certs_dir):
    for stem in ("ca", "server", "sensor-1"):
        assert mode(certs_dir / f"{stem}.key") == 0o600
        assert mode(certs_dir / f"{stem}.crt") == 0o644
    assert not [p for p in certs_dir.iterdir() if p.name.startswith(".")]  # no temporaries


def test_server_certificate_names_every_host(certs_dir):
    cert = x509.load_pem_x509_certificate((certs_dir / "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]


async def tls_pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str):
    """Both handshakes over memory; raises the client's failure, if any."""
    left, right = trio.testing.memory_stream_pair()
    client = trio.SSLStream(left, client_ctx, server_hostname=hostname)
    server = trio.SSLStream(right, server_ctx, server_side=True)
    failures: list[BaseException] = []

    async def client_side() -> None:
        try:
            await client.do_handshake()
        except trio.BrokenResourceError as exc:
            failures.append(exc)
            await trio.aclose_forcefully(client)  # the server learns of it too

    async def server_side() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await server.do_handshake()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_side)
        nursery.start_soon(server_side)
    if failures:
        raise failures[0]
    return client, server


def server_context(certs_dir, verify_clients: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs_dir / "server.crt", certs_dir / "server.key")
    if verify_clients:
        ctx.load_verify_locations(certs_dir / "ca.crt")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1"])
async def test_chain_verifies_for_each_name_with_a_client_certificate(certs_dir, hostname):
    client_ctx = ssl.create_default_context(cafile=certs_dir / "ca.crt")
    client_ctx.load_cert_chain(certs_dir / "sensor-1.crt", certs_dir / "sensor-1.key")
    _client, server = await tls_pair(server_context(certs_dir, True), client_ctx, hostname)
    assert certificate_identity(server.getpeercert()) == "sensor-1"


async def test_another_name_or_another_ca_is_rejected(certs_dir, tmp_path):
    client_ctx = ssl.create_default_context(cafile=certs_dir / "ca.crt")
    with pytest.raises(trio.BrokenResourceError) as failed:
        await tls_pair(server_context(certs_dir, False), client_ctx, "broker.example")
    assert "match" in str(failed.value.__cause__)  # hostname mismatch
    other_ca, _ = load_or_create_ca(tmp_path)
    issue_server(other_ca, tmp_path, ("localhost",))
    client_ctx = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    with pytest.raises(trio.BrokenResourceError):
        await tls_pair(server_context(certs_dir, False), client_ctx, "localhost")


def test_existing_ca_is_reused(tmp_path):
    first, created = load_or_create_ca(tmp_path)
    again, created_again = load_or_create_ca(tmp_path)
    assert (created, created_again) == (True, False)
    assert again.certificate == first.certificate


@pytest.mark.parametrize("name", ["", "ca", "server", "../x", "a b", "-x"])
def test_bad_client_names_are_refused(tmp_path, name):
    ca, _ = load_or_create_ca(tmp_path)
    with pytest.raises(CertError, match="client name"):
        issue_client(ca, tmp_path, name)


def test_bad_host_is_refused(tmp_path):
    ca, _ = load_or_create_ca(tmp_path)
    with pytest.raises(CertError, match="not a DNS name or an IP address"):
        issue_server(ca, tmp_path, ("bad host",))


def test_cli_writes_ca_server_and_clients_then_keeps_them(tmp_path, capsys):
    directory = tmp_path / "certs"
    assert main(["certs", "--dir", str(directory), "--client", "sensor-1"]) == 0
    out = capsys.readouterr().out
    assert "created CA" in out and "(localhost, 127.0.0.1, ::1)" in out and "CN=sensor-1" in out
    assert mode(directory) == 0o700
    server = (directory / "server.crt").read_bytes()
    assert main(["certs", "--dir", str(directory)]) == 0
    assert "kept existing" in capsys.readouterr().out
    assert (directory / "server.crt").read_bytes() == server
    assert main(["certs", "--dir", str(directory), "--server", "broker.local", "10.1.2.3"]) == 0
    assert (directory / "server.crt").read_bytes() != server


def test_cli_checks_every_name_before_writing(tmp_path, capsys):
    directory = tmp_path / "certs"
    assert main(["certs", "--dir", str(directory), "--client", "ok", "--client", "b/d"]) == 2
    assert "client name 'b/d'" in capsys.readouterr().err
    assert not directory.exists()
