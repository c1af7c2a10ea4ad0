"""Development certificates (``polybroker certs``): a CA, server and client certificates.

For trying TLS and client-certificate setups, not for production: the CA's key lies
unencrypted beside the certificates (mode 0600, as every key written here).
Keys are ECDSA P-256, which every TLS client of our field accepts.
"""

import datetime
import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity some TLS clients accept for a server certificate
ORGANIZATION = "polybroker development"
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RESERVED = {"ca", "server"}
# Backdated a little, for devices whose clocks lag.
_CLOCK_SKEW = datetime.timedelta(hours=1)


class CertError(ValueError):
    """A name, host or file the certs command cannot use."""


@dataclass(frozen=True, slots=True)
class Authority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def load_or_create_ca(directory: Path, days: int = CA_DAYS) -> tuple[Authority, bool]:
    """The CA in ``directory`` (ca.crt, ca.key), created if absent; and whether it was."""
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except ValueError as exc:
            raise CertError(f"{cert_path} / {key_path}: not a usable CA: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertError(f"{key_path}: not an EC key written by polybroker certs")
        return Authority(certificate, key), False
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("polybroker development CA")
    certificate = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(directory, "ca", certificate, key)
    return Authority(certificate, key), True


def issue_server(ca: Authority, directory: Path, hosts: tuple[str, ...],
                 days: int = LEAF_DAYS) -> tuple[Path, Path]:
    """server.crt and server.key for ``hosts`` (DNS names and IP addresses, as SANs)."""
    names = [san_for_host(host) for host in hosts]
    if not names:
        raise CertError("a server certificate needs at least one host name or address")
    return _issue(ca, directory, "server", hosts[0], days, ExtendedKeyUsageOID.SERVER_AUTH,
                  x509.SubjectAlternativeName(names))


def issue_client(ca: Authority, directory: Path, name: str,
                 days: int = LEAF_DAYS) -> tuple[Path, Path]:
    """NAME.crt and NAME.key whose subject CN is NAME (the identity the broker sees)."""
    check_client_name(name)
    return _issue(ca, directory, name, name, days, ExtendedKeyUsageOID.CLIENT_AUTH, None)


def _issue(ca: Authority, directory: Path, stem: str, common_name: str, days: int,
           usage: x509.ObjectIdentifier, san: x509.SubjectAlternativeName | None,
           ) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    builder = (
        _builder(_name(common_name), ca.certificate.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
            critical=False,
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return _write(directory, stem, builder.sign(ca.key, hashes.SHA256()), key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def check_client_name(name: str) -> None:
    if not _CLIENT_NAME.fullmatch(name) or name in _RESERVED:
        raise CertError(f"client name {name!r}: use letters, digits, '.', '_' and '-' "
                        "(not 'ca' or 'server'); it names the files too")


def san_for_host(host: str) -> x509.GeneralName:
    """The subject alternative name for a DNS name or an IP address."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
        raise CertError(f"host {host!r}: not a DNS name or an IP address")
    return x509.DNSName(host.lower())


def _write(directory: Path, stem: str, certificate: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    key_path, cert_path = directory / f"{stem}.key", directory / f"{stem}.crt"
    # A broker reloading on SIGHUP between these two renames finds a key that does not
    # match the certificate, says so and keeps the certificates it had.
    _replace(key_path, key_pem, 0o600)
    _replace(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write a sibling temporary file with ``mode`` from the start, then rename it over."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
