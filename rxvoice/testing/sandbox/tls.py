"""A throwaway certificate authority and server certificate, so the sandbox can speak ``wss://``.

Discord's gateways are TLS only, and clients build ``wss://`` URLs from what
the gateway sends. The sandbox therefore serves both WebSockets over TLS with
a certificate made at start-up: a short-lived EC P-256 CA and a server
certificate it signs for the loopback address (plus the bind host). The CA
certificate is written to a PEM file, so any client can trust it (Python
``cafile=``, Node ``NODE_EXTRA_CA_CERTS``, ``curl --cacert``); everything is
deleted by :meth:`SandboxTls.cleanup`.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["SandboxTls"]

_VALIDITY = datetime.timedelta(days=7)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rxvoice sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _subject_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(["127.0.0.1", "localhost", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """What the CA and the server certificate share; ``ca`` decides constraints and usage."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


class SandboxTls:
    """A temporary CA plus a server certificate signed by it, on disk for ``ssl``.

    Args:
        hosts: Extra host names or IP addresses the server certificate must
            cover; ``127.0.0.1`` and ``localhost`` are always included.

    Attributes:
        ca_file: Path of the CA certificate (PEM) that clients should trust.
    """

    def __init__(self, hosts: list[str] | None = None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="rxvoice-sandbox-"))  # mode 0700
        now = datetime.datetime.now(datetime.UTC)
        not_before, not_after = now - datetime.timedelta(hours=1), now + _VALIDITY

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("rxvoice sandbox CA")
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = (
            _builder(ca_name, ca_name, ca_key.public_key(), not_before, not_after, ca=True)
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        key = ec.generate_private_key(ec.SECP256R1())
        server_name = _name("127.0.0.1")
        cert = (
            _builder(server_name, ca_name, key.public_key(), not_before, not_after, ca=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(_subject_names(hosts or [])), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )

        pem = serialization.Encoding.PEM
        self.ca_file = self._dir / "ca.pem"
        self.ca_file.write_bytes(ca_cert.public_bytes(pem))
        self._cert_file = self._dir / "server.pem"
        self._cert_file.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
        self._key_file = self._dir / "server.key"
        self._key_file.touch(mode=0o600)
        self._key_file.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )

    def __repr__(self) -> str:
        return f"SandboxTls(ca_file={str(self.ca_file)!r})"

    def server_context(self) -> ssl.SSLContext:
        """Return a TLS server context holding the sandbox certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert_file, self._key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Return a TLS client context that trusts the sandbox CA (and verifies host names)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def cleanup(self) -> None:
        """Delete the certificate files; safe to call more than once."""
        shutil.rmtree(self._dir, ignore_errors=True)
