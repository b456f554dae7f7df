"""
Throwaway certificates for TLS tests, made with C{cryptography} (which
pyOpenSSL needs anyway) in a test's temporary directory.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from pathlib import Path
from typing import Any, Optional

import attrs
from twisted.trial.unittest import SkipTest


def require_tls() -> None:
    """
    Skip unless pyOpenSSL (Twisted's TLS) and C{cryptography} are here.
    """
    try:
        import cryptography  # noqa: F401
        import OpenSSL  # noqa: F401
    except ImportError as e:
        raise SkipTest(
            f"TLS needs pyOpenSSL and cryptography ({e}): pip install '.[tls]'"
        ) from None


@attrs.frozen
class Identity:
    """
    A certificate and its key, saved as PEM files.

    @ivar cert: the certificate's file.
    @ivar key: the private key's file.
    @ivar der: the certificate, DER.
    @ivar fingerprint: its SHA-256 fingerprint, lower-case hex.
    """

    cert: Path
    key: Path
    der: bytes
    fingerprint: str
    _certificate: Any = attrs.field(default=None, repr=False)
    _private_key: Any = attrs.field(default=None, repr=False)

    def colons(self) -> str:
        """
        The fingerprint as OpenSSL prints it: upper case, with colons.
        """
        hexed = self.fingerprint.upper()
        return ":".join(hexed[i : i + 2] for i in range(0, len(hexed), 2))


def load(cert: Path, key: Path) -> Identity:
    """
    An identity from PEM files made elsewhere (it cannot sign).
    """
    import ssl

    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    return Identity(cert, key, der, hashlib.sha256(der).hexdigest())


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make(
    directory: Path,
    name: str,
    issuer: Optional[Identity] = None,
    ca: bool = False,
    server: bool = False,
    days: int = 1,
) -> Identity:
    """
    A certificate called C{name} (files C{NAME.pem} and C{NAME.key} in
    C{directory}), signed by C{issuer} (self-signed without one).

    @param ca: it may sign certificates.
    @param server: it names 127.0.0.1, ::1 and localhost.
    @param days: how long it is valid from now (negative: it expired).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=2), now + datetime.timedelta(days=days)
    if days < 0:
        start, end = now - datetime.timedelta(days=10), now + datetime.timedelta(days=days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name) if issuer is None else issuer._certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
    signer = key if issuer is None else issuer._private_key
    certificate = builder.sign(signer, hashes.SHA256())
    der = certificate.public_bytes(serialization.Encoding.DER)
    cert_path = directory / f"{name}.pem"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Identity(cert_path, key_path, der, hashlib.sha256(der).hexdigest(), certificate, key)


@attrs.frozen
class PKI:
    """
    A CA, a server certificate and client certificates, in a directory.

    @ivar ca: the CA the server trusts for clients (and that signed the
        server's certificate).
    @ivar server: the server's certificate (127.0.0.1, ::1, localhost).
    @ivar alice: a client certificate from L{ca}.
    @ivar bob: another client certificate from L{ca}.
    @ivar intermediate: a CA signed by L{ca}.
    @ivar carol: a client certificate from L{intermediate}.
    @ivar other_ca: a CA nobody trusts.
    @ivar mallory: a client certificate from L{other_ca}.
    @ivar selfsigned: a self-signed client certificate.
    """

    directory: Path
    ca: Identity
    server: Identity
    alice: Identity
    bob: Identity
    intermediate: Identity
    carol: Identity
    other_ca: Identity
    mallory: Identity
    selfsigned: Identity


def make_pki(directory: Path) -> PKI:
    """
    Make a L{PKI} in C{directory} (created if needed).
    """
    require_tls()
    directory.mkdir(parents=True, exist_ok=True)
    ca = make(directory, "ca", ca=True, days=3)
    intermediate = make(directory, "intermediate", ca, ca=True, days=3)
    other_ca = make(directory, "other-ca", ca=True, days=3)
    return PKI(
        directory=directory,
        ca=ca,
        server=make(directory, "server", ca, server=True),
        alice=make(directory, "alice", ca),
        bob=make(directory, "bob", ca),
        intermediate=intermediate,
        carol=make(directory, "carol", intermediate),
        other_ca=other_ca,
        mallory=make(directory, "mallory", other_ca),
        selfsigned=make(directory, "selfsigned"),
    )
