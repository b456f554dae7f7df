# -*- test-case-name: txgearmand.test.test_access -*-
"""
TLS client certificates on C{ssl:} server endpoints.

Twisted's C{ssl:} server endpoint string has no way to ask a client for
its certificate (its C{caCertsDir=} is for clients checking servers, and
the C{tls:} server endpoint has none either), so txgearmand adds two
parameters of its own to C{ssl:} descriptions, taken out before Twisted
reads the rest:

  - C{clientCA=PATH}: a PEM file of one or more CA certificates.  A
    client certificate must verify against one of them; the handshake
    fails otherwise.  Given alone, it makes a client certificate
    required.
  - C{clientCert=required|optional|none}: whether a client must present
    a certificate (the handshake fails without one), may (it is asked
    for, and checked if sent), or is not asked (Twisted's default).
    Without C{clientCA=}, C{required} and C{optional} accept any
    certificate, self-signed ones included: the handshake still proves
    the client holds its key, and C{cert:FINGERPRINT} access rules
    (L{txgearmand.access}) say which ones count.

For example
C{ssl:4730:privateKey=server.key:certKey=server.pem:clientCA=ca.pem}.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import attrs
from twisted.internet import endpoints
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IStreamServerEndpoint
from zope.interface import implementer

__all__ = [
    "CLIENT_CERT_MODES",
    "ClientCertificates",
    "server_from_string",
    "split_description",
]

#: The values of C{clientCert=}.
CLIENT_CERT_MODES = ("required", "optional", "none")

_PARAMETERS = ("clientCA", "clientCert")
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


@attrs.frozen
class ClientCertificates:
    """
    What an C{ssl:} port asks of its clients' certificates.

    @ivar mode: C{required} or C{optional} (see L{CLIENT_CERT_MODES}).
    @ivar ca_path: the PEM file of the CA certificates a client
        certificate must verify against, or C{None} to accept any.
    """

    mode: str
    ca_path: Optional[str] = None


def _split_unescaped(text: str) -> list[str]:
    """
    Split an endpoint description at the colons that are not escaped by a
    backslash (escapes are kept).
    """
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def split_description(description: str) -> tuple[str, Optional[ClientCertificates]]:
    """
    Take C{clientCA=} and C{clientCert=} out of a server endpoint
    description.

    @return: the description Twisted reads, and what is asked of client
        certificates (C{None}: nothing, as Twisted does).
    @raise ValueError: if they are on another kind of endpoint than
        C{ssl:}, given twice, or have a bad value.
    """
    parts = _split_unescaped(description)
    kept: list[str] = []
    found: dict[str, str] = {}
    for n, part in enumerate(parts):
        key, sep, value = part.partition("=")
        if n and sep and key in _PARAMETERS:
            if key in found:
                raise ValueError(f"{key}= is given twice")
            found[key] = _unescape(value)
        else:
            kept.append(part)
    if not found:
        return description, None
    if parts[0] != "ssl":
        raise ValueError("clientCA= and clientCert= are only for ssl: endpoints")
    ca_path = found.get("clientCA")
    if ca_path is not None and not ca_path:
        raise ValueError("clientCA= needs the path of a PEM file of CA certificates")
    mode = found.get("clientCert", "required" if ca_path else "none")
    if mode not in CLIENT_CERT_MODES:
        raise ValueError(f"clientCert= must be one of {', '.join(CLIENT_CERT_MODES)}, not {mode!r}")
    plain = ":".join(kept)
    if mode == "none":
        if ca_path is not None:
            raise ValueError("clientCA= asks for client certificates, clientCert=none does not")
        return plain, None
    return plain, ClientCertificates(mode, ca_path)


def _load_cas(path: str) -> list[Any]:
    """
    The certificates of a PEM file, as pyOpenSSL C{X509} objects.

    @raise ValueError: if it cannot be read or holds none.
    """
    from OpenSSL import crypto

    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ValueError(f"clientCA={path}: cannot read it: {e.strerror or e}") from None
    found = []
    for block in _PEM_CERTIFICATE.findall(pem):
        try:
            found.append(crypto.load_certificate(crypto.FILETYPE_PEM, block))
        except Exception as e:
            raise ValueError(f"clientCA={path}: a certificate that cannot be read ({e})") from None
    if not found:
        raise ValueError(f"clientCA={path}: no PEM certificate in it")
    return found


def _add_client_ca(context: Any, certificate: Any) -> None:
    # pyOpenSSL 24.3+ wants a cryptography certificate here (an X509 is
    # deprecated); older ones take only an X509.
    try:
        context.add_client_ca(certificate.to_cryptography())
    except TypeError:
        context.add_client_ca(certificate)


def _accept_any(connection: Any, certificate: Any, errno: int, depth: int, ok: int) -> bool:
    # No CA to check against: any certificate will do (the handshake still
    # proves the client holds its key; cert: rules pick the ones that count).
    return True


@implementer(IOpenSSLServerConnectionCreator)
class _AskingForClientCertificates:
    """
    Wraps the TLS settings Twisted made for an C{ssl:} port (a
    C{CertificateOptions}): its connections also ask for the client's
    certificate, and check it.
    """

    def __init__(self, wrapped: Any, wanted: ClientCertificates, cas: list[Any]) -> None:
        self._wrapped = wrapped
        self._wanted = wanted
        self._cas = cas
        self._configured: Any = None

    def _configure(self, context: Any) -> None:
        from OpenSSL import SSL

        mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
        if self._wanted.mode == "required":
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        if self._cas:
            store = context.get_cert_store()
            for certificate in self._cas:
                store.add_cert(certificate)
                # Named in the request, so that a client can pick its
                # certificate.
                _add_client_ca(context, certificate)
            context.set_verify(mode)
        else:
            context.set_verify(mode, _accept_any)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        """
        A server-side C{OpenSSL.SSL.Connection} for a new connection, on
        the wrapped settings' context, set (before the connection is made
        from it) to ask for the client's certificate.
        """
        from OpenSSL import SSL

        context = self._wrapped.getContext()
        if context is not self._configured:
            self._configure(context)
            self._configured = context
        return SSL.Connection(context, None)


def server_from_string(reactor: Any, description: str) -> IStreamServerEndpoint:
    """
    A server endpoint from its description, as
    C{twisted.internet.endpoints.serverFromString} makes it, and with
    C{clientCA=} and C{clientCert=} on C{ssl:} endpoints (their CA file is
    read now).

    @raise ValueError: for a bad C{clientCA=} or C{clientCert=}.
    @raise Exception: what C{serverFromString} raises for the rest.
    """
    plain, wanted = split_description(description)
    endpoint: IStreamServerEndpoint = endpoints.serverFromString(reactor, plain)
    if wanted is None:
        return endpoint
    if not isinstance(endpoint, endpoints.SSL4ServerEndpoint):
        raise ValueError("clientCA= and clientCert= are only for ssl: endpoints")
    cas = _load_cas(wanted.ca_path) if wanted.ca_path is not None else []
    asking = _AskingForClientCertificates(endpoint._sslContextFactory, wanted, cas)
    return endpoints.SSL4ServerEndpoint(
        reactor,
        endpoint._port,
        asking,
        backlog=endpoint._backlog,
        interface=endpoint._interface,
    )


def service(description: str, factory: Any, reactor: Any = None) -> Any:
    """
    A listening service for a description, as
    C{twisted.application.strports.service} makes it (a port that cannot
    be bound fails the start), through L{server_from_string}.

    @return: a C{StreamServerEndpointService}.
    """
    from twisted.application.internet import StreamServerEndpointService

    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    listening = StreamServerEndpointService(server_from_string(reactor, description), factory)
    listening._raiseSynchronously = True
    return listening
