# -*- test-case-name: txgearmand.test.test_access -*-
"""
Who may change what: the C{--admin-allow} rules, and what a peer is to
them.

A rule names peers by what the server knows of a connection:

  - an address or a network: C{127.0.0.1}, C{127.0.0.0/8}, C{::1},
    C{10.0.0.0/8}, C{fd00::/8}.  An IPv4 peer seen through an IPv6 socket
    (C{::ffff:10.1.2.3}) matches the IPv4 rules, and the other way round;
  - C{unix}: peers on a UNIX socket, which includes the socketpairs the
    server makes itself for in-process connections
    (L{txgearmand.server.JobServer.to_inprocess_server}) and child workers
    (L{txgearmand.server.JobServer.start_worker});
  - C{cert:FINGERPRINT}: a peer whose TLS client certificate has this
    SHA-256 fingerprint (64 hex digits, with or without colons, any case,
    optionally after C{sha256:} or OpenSSL's C{sha256 Fingerprint=});
  - C{ca:PATH}: a peer whose TLS client certificate verifies against the
    CA certificate(s) in the PEM file C{PATH} (read once, when the rules
    are parsed).  Needs pyOpenSSL.

A peer is allowed when any rule matches it.  With no rule at all
L{AccessRules.allows} allows everyone: that is the default, as before
the rules existed (the admin C{shutdown} command keeps its own
C{--admin-shutdown} policy besides).

For something other than a Gearman connection (a status web site's
mutating actions, say), the whole API is::

    rules = server.settings.admin_allow          # an AccessRules
    if rules.allows(identity_of(request.channel.transport)):
        ...                                      # do it

L{identity_of} reads any Twisted transport (TCP, UNIX, TLS; for a
C{twisted.web} request, C{request.channel.transport}); a L{PeerIdentity}
can also be built by hand.  L{AccessRules.restricted} says whether any
rule was given, for a front door that would rather stay closed than open
to everyone when there is none.  A TLS client certificate is only there
when the port asked for it (see L{txgearmand.clientcerts}).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional, Union

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from zope.interface import Interface

if TYPE_CHECKING:
    from OpenSSL import crypto

__all__ = [
    "AccessRuleError",
    "AccessRules",
    "IIdentifiedPeer",
    "PeerIdentity",
    "identity_of",
    "identity_of_peer",
    "is_local_address",
    "parse_fingerprint",
]

_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
_Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_FINGERPRINT_PREFIX = re.compile(r"^sha-?256(?:\s*fingerprint)?\s*[:=]\s*", re.IGNORECASE)
_HEX = re.compile(r"^[0-9a-f]*$")
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


class AccessRuleError(ValueError):
    """
    A rule that cannot be read; its message names the rule and says why.
    """


@attrs.frozen
class PeerIdentity:
    """
    What the rules know of a peer.

    @ivar address: its IP address without a port (C{"10.1.2.3"},
        C{"::1"}, C{"::ffff:10.1.2.3"}), or C{None} when it is not on IP.
    @ivar unix: it is on a UNIX socket (a socketpair of the server's own
        included).
    @ivar certificate: its TLS client certificate (DER bytes), or C{None}
        when it presented none.
    @ivar chain: the other certificates (DER) it sent with it, its
        intermediate CAs, for C{ca:} rules.
    """

    address: Optional[str] = None
    unix: bool = False
    certificate: Optional[bytes] = None
    chain: tuple[bytes, ...] = ()


class IIdentifiedPeer(Interface):
    """
    A peer (an L{txgearmand.interfaces.IPeer}) that can say who it is for
    the access rules.  Peers that do not provide it are known to no rule.
    """

    def identity() -> PeerIdentity:
        """
        Who the peer is now.
        """


def is_local_address(address: object) -> bool:
    """
    Whether a peer address is on this host: the loopback (IPv4, IPv6, or
    IPv4 on IPv6) or a UNIX socket.
    """
    if isinstance(address, UNIXAddress):
        return True
    if isinstance(address, (IPv4Address, IPv6Address)):
        try:
            ip = ipaddress.ip_address(address.host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped.is_loopback
        return ip.is_loopback
    return False


def identity_of(transport: object, address: object = None) -> PeerIdentity:
    """
    The identity of the peer of a Twisted transport: TCP (v4 or v6), UNIX,
    or TLS over either (with the client certificate, if it sent one).

    @param transport: the transport, e.g. a protocol's C{transport}, or a
        web request's C{request.channel.transport}.
    @param address: its peer address, when already known (else
        C{transport.getPeer()}).
    """
    if address is None:
        get_peer = getattr(transport, "getPeer", None)
        if get_peer is not None:
            try:
                address = get_peer()
            except Exception:
                address = None
    host: Optional[str] = None
    unix = False
    if isinstance(address, (IPv4Address, IPv6Address)):
        host = address.host
    elif isinstance(address, UNIXAddress):
        unix = True
    certificate: Optional[bytes] = None
    chain: tuple[bytes, ...] = ()
    get_certificate = getattr(transport, "getPeerCertificate", None)
    if get_certificate is not None:
        try:
            peer_certificate = get_certificate()
        except Exception:
            peer_certificate = None
        if peer_certificate is not None:
            certificate = _der(peer_certificate)
            chain = _peer_chain(transport)
    return PeerIdentity(address=host, unix=unix, certificate=certificate, chain=chain)


def identity_of_peer(peer: object) -> PeerIdentity:
    """
    The identity of any peer: what an L{IIdentifiedPeer} says, else
    nothing known (no rule matches it).
    """
    if IIdentifiedPeer.providedBy(peer):
        identity: PeerIdentity = peer.identity()  # type: ignore[attr-defined]
        return identity
    return PeerIdentity()


def _der(certificate: Any) -> bytes:
    """
    The DER bytes of a pyOpenSSL C{X509} (DER bytes stay as they are).
    """
    if isinstance(certificate, bytes):
        return certificate
    from OpenSSL import crypto

    return crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)


def _peer_chain(transport: object) -> tuple[bytes, ...]:
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return ()
    try:
        chain = get_handle().get_peer_cert_chain()
    except Exception:
        return ()
    return tuple(_der(c) for c in chain or ())


def parse_fingerprint(text: str) -> bytes:
    """
    A SHA-256 certificate fingerprint as its 32 bytes, from the ways it
    is written: 64 hex digits, with or without colons (or spaces), in any
    case, optionally after C{sha256:}, C{SHA256=} or OpenSSL's
    C{sha256 Fingerprint=}.

    @raise AccessRuleError: if it is not one.
    """
    digits = _FINGERPRINT_PREFIX.sub("", text.strip())
    digits = re.sub(r"[:\s]", "", digits).lower()
    if not _HEX.match(digits) or not digits:
        raise AccessRuleError(f"cert:{text}: a fingerprint is 64 hex digits (SHA-256)")
    if len(digits) == 40:
        raise AccessRuleError(
            f"cert:{text}: that is a SHA-1 fingerprint; give the SHA-256 one"
            " (openssl x509 -noout -fingerprint -sha256 -in CERT)"
        )
    if len(digits) != 64:
        raise AccessRuleError(
            f"cert:{text}: a SHA-256 fingerprint is 64 hex digits, not {len(digits)}"
        )
    return bytes.fromhex(digits)


class _Rule:
    """
    One parsed rule.
    """

    def matches(self, peer: PeerIdentity) -> bool:
        raise NotImplementedError()


@attrs.frozen
class _NetworkRule(_Rule):
    network: _Network

    def matches(self, peer: PeerIdentity) -> bool:
        if peer.address is None:
            return False
        return any(
            candidate in self.network
            for candidate in _forms(peer.address)
            if candidate.version == self.network.version
        )


@attrs.frozen
class _UnixRule(_Rule):
    def matches(self, peer: PeerIdentity) -> bool:
        return peer.unix


@attrs.frozen
class _FingerprintRule(_Rule):
    digest: bytes

    def matches(self, peer: PeerIdentity) -> bool:
        if peer.certificate is None:
            return False
        return hashlib.sha256(peer.certificate).digest() == self.digest


@attrs.frozen(eq=False)
class _CARule(_Rule):
    path: str
    store: crypto.X509Store

    def matches(self, peer: PeerIdentity) -> bool:
        if peer.certificate is None:
            return False
        from OpenSSL import crypto

        try:
            leaf = crypto.load_certificate(crypto.FILETYPE_ASN1, peer.certificate)
            chain = [crypto.load_certificate(crypto.FILETYPE_ASN1, c) for c in peer.chain]
            crypto.X509StoreContext(self.store, leaf, chain).verify_certificate()
        except Exception:
            return False
        return _for_clients(peer.certificate)


def _for_clients(der: bytes) -> bool:
    """
    Whether a certificate may identify a client: not a CA's, and, where it
    says what it is for, for client authentication and signing (so that a
    server's certificate from the same CA is no admin's).
    """
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        certificate = x509.load_der_x509_certificate(der)
        extensions = certificate.extensions
        try:
            if extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                return False
        except x509.ExtensionNotFound:
            pass
        try:
            purposes = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            if (
                ExtendedKeyUsageOID.CLIENT_AUTH not in purposes
                and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in purposes
            ):
                return False
        except x509.ExtensionNotFound:
            pass
        try:
            usage = extensions.get_extension_for_class(x509.KeyUsage).value
            if not (usage.digital_signature or usage.key_agreement):
                return False
        except x509.ExtensionNotFound:
            pass
    except Exception:
        return False
    return True


def _forms(address: str) -> list[_Address]:
    """
    An address and, for an IPv4 one or an IPv4-mapped IPv6 one, its other
    spelling; none if it is not an IP address.
    """
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0].strip("[]"))
    except ValueError:
        return []
    if isinstance(parsed, ipaddress.IPv6Address):
        mapped = parsed.ipv4_mapped
        return [parsed] if mapped is None else [parsed, mapped]
    return [parsed, ipaddress.IPv6Address("::ffff:" + str(parsed))]


def _network_rule(text: str) -> _NetworkRule:
    bare = text.strip("[]") if text.startswith("[") else text
    try:
        return _NetworkRule(ipaddress.ip_network(bare, strict=True))
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(bare, strict=False)
    except ValueError:
        raise AccessRuleError(
            f"{text}: not an address, a network (10.0.0.0/8), unix, cert:SHA256 or ca:PATH"
        ) from None
    raise AccessRuleError(f"{text}: the network has host bits set; did you mean {loose}?")


def _ca_rule(path: str) -> _CARule:
    if not path:
        raise AccessRuleError("ca: needs the path of a PEM file of CA certificates")
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise AccessRuleError(f"ca:{path}: cannot read it: {e.strerror or e}") from None
    try:
        from OpenSSL import crypto
    except ImportError:
        raise AccessRuleError(
            f"ca:{path}: needs pyOpenSSL (pip install 'txgearmand[tls]')"
        ) from None
    store = crypto.X509Store()
    found = 0
    for block in _PEM_CERTIFICATE.findall(pem):
        try:
            store.add_cert(crypto.load_certificate(crypto.FILETYPE_PEM, block))
        except Exception as e:
            raise AccessRuleError(f"ca:{path}: a certificate that cannot be read ({e})") from None
        found += 1
    if not found:
        raise AccessRuleError(f"ca:{path}: no PEM certificate in it")
    return _CARule(path, store)


def _parse_rule(text: str) -> _Rule:
    rule = text.strip()
    if not rule:
        raise AccessRuleError("an empty rule")
    kind, sep, value = rule.partition(":")
    lowered = kind.lower()
    if rule.lower() == "unix":
        return _UnixRule()
    if sep and lowered == "cert":
        return _FingerprintRule(parse_fingerprint(value))
    if sep and lowered == "ca":
        return _ca_rule(value)
    return _network_rule(rule)


def _texts(rules: Union[str, Iterable[str]]) -> tuple[str, ...]:
    if isinstance(rules, str):
        rules = [rules]
    return tuple(r.strip() for r in rules)


@attrs.frozen
class AccessRules:
    """
    Who may run mutating commands: the C{--admin-allow} rules, parsed.

    Build it with L{parse} (or C{AccessRules(rules)}: the same); ask it
    with L{allows}.  Two are equal when their rules' texts are.

    @ivar rules: the rules as given (stripped).
    """

    rules: tuple[str, ...] = attrs.field(default=(), converter=_texts)
    _parsed: tuple[_Rule, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_parsed", tuple(_parse_rule(r) for r in self.rules))

    @classmethod
    def parse(cls, rules: Iterable[str]) -> AccessRules:
        """
        Parse rules (the values of C{--admin-allow}); a C{ca:} rule reads
        its file now.

        @raise AccessRuleError: for the first rule that cannot be read,
            naming it and saying why.
        """
        return cls(tuple(rules))

    @property
    def restricted(self) -> bool:
        """
        Whether there are rules (without any, everyone is allowed).
        """
        return bool(self.rules)

    def allows(self, peer: PeerIdentity) -> bool:
        """
        Whether C{peer} may run mutating commands: there is no rule, or one
        of them matches it.
        """
        return not self.rules or self.matching(peer) is not None

    def matching(self, peer: PeerIdentity) -> Optional[str]:
        """
        The first rule (its text) that matches C{peer}, or C{None}.
        """
        for text, rule in zip(self.rules, self._parsed):
            if rule.matches(peer):
                return text
        return None
