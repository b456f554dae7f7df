"""
Tests for who may change what: L{txgearmand.access} (the C{--admin-allow}
rules), their use by the admin commands, L{txgearmand.clientcerts}
(client certificates on C{ssl:} ports), and all of it end to end against
a C{twistd gearmand} process over TCP (127.0.0.1 and ::1), UNIX sockets
and TLS, with Python's C{gear} as the TLS client.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, cast

import attrs
from twisted.internet.address import IPv6Address
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import implementer

from txgearmand import clientcerts, tap
from txgearmand.access import (
    AccessRuleError,
    AccessRules,
    IIdentifiedPeer,
    PeerIdentity,
    identity_of,
    identity_of_peer,
    parse_fingerprint,
)
from txgearmand.settings import Settings, SettingsError
from txgearmand.test import _pki, _process
from txgearmand.test.helpers import LOCAL, LOCAL6, REMOTE, UNIX, ServerTestMixin
from txgearmand.testing import RecordingPeer

try:
    import gear
except ImportError:  # pragma: no cover
    gear = None

#: Every network wait in these tests is bounded by this.
TIMEOUT = 20.0

DENIED = b"ERR PERMISSION_DENIED %s+is+not+allowed+from+this+connection+by+--admin-allow\r\n"


def _digest(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


# -- the rules, with fakes ---------------------------------------------------


def _restore_module(name: str, module: Any) -> None:
    if module is None:
        sys.modules.pop(name, None)
    else:
        sys.modules[name] = module


class RuleParsingTests(SynchronousTestCase):
    """
    L{AccessRules.parse}: each kind of rule, and a clear error for a bad
    one.
    """

    def test_kinds(self) -> None:
        """
        Addresses, networks (v4 and v6), C{unix} in any case, C{cert:} and
        C{ca:} rules are read; the rules keep their text, stripped.
        """
        pki = _pki.make_pki(Path(self.mktemp()))
        texts = [
            "127.0.0.1",
            " 10.0.0.0/8 ",
            "::1",
            "fd00::/8",
            "[::1]",
            "UNIX",
            "cert:" + "ab" * 32,
            f"ca:{pki.ca.cert}",
        ]
        rules = AccessRules.parse(texts)
        self.assertEqual(rules.rules, tuple(t.strip() for t in texts))
        self.assertTrue(rules.restricted)
        self.assertEqual(rules, AccessRules(texts))

    def test_none(self) -> None:
        """
        Without rules nothing is restricted and everyone is allowed.
        """
        rules = AccessRules()
        self.assertFalse(rules.restricted)
        self.assertTrue(rules.allows(PeerIdentity()))
        self.assertTrue(rules.allows(PeerIdentity(address="192.0.2.1")))
        self.assertEqual(AccessRules.parse([]), rules)

    def test_one_string(self) -> None:
        """
        One string is one rule, not a rule per character.
        """
        self.assertEqual(AccessRules("unix").rules, ("unix",))

    def test_errors(self) -> None:
        """
        Each bad rule raises L{AccessRuleError} (a C{ValueError}) naming
        it and saying what is wrong.
        """
        cases = {
            "": "an empty rule",
            "localhost": "localhost: not an address, a network",
            "10.1.0.0/8": "did you mean 10.0.0.0/8?",
            "300.1.1.1": "300.1.1.1: not an address",
            "::1/200": "::1/200: not an address",
            "cert:": "64 hex digits",
            "cert:xyz": "cert:xyz: a fingerprint is 64 hex digits",
            "cert:abcd": "64 hex digits, not 4",
            "cert:" + "a" * 40: "a SHA-1 fingerprint; give the SHA-256 one",
            "ca:": "ca: needs the path of a PEM file",
            "ca:/nonexistent/ca.pem": "ca:/nonexistent/ca.pem: cannot read it: No such file",
        }
        for text, message in cases.items():
            with self.assertRaises(AccessRuleError) as raised:
                AccessRules.parse([text])
            self.assertIsInstance(raised.exception, ValueError)
            self.assertIn(message, str(raised.exception), text)

    def test_ca_file_without_certificates(self) -> None:
        """
        A C{ca:} file that holds no certificate, or a broken one, is
        refused.
        """
        _pki.require_tls()
        empty = Path(self.mktemp())
        empty.write_text("nothing here\n")
        with self.assertRaises(AccessRuleError) as raised:
            AccessRules.parse([f"ca:{empty}"])
        self.assertIn("no PEM certificate in it", str(raised.exception))
        broken = Path(self.mktemp())
        broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        with self.assertRaises(AccessRuleError) as raised:
            AccessRules.parse([f"ca:{broken}"])
        self.assertIn("a certificate that cannot be read", str(raised.exception))

    def test_ca_without_pyopenssl(self) -> None:
        """
        Without pyOpenSSL a C{ca:} rule is refused, saying what to install.
        """
        path = Path(self.mktemp())
        path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        for name in ("OpenSSL", "OpenSSL.crypto"):
            self.addCleanup(_restore_module, name, sys.modules.get(name))
            sys.modules[name] = None  # type: ignore[assignment]
        with self.assertRaises(AccessRuleError) as raised:
            AccessRules.parse([f"ca:{path}"])
        self.assertEqual(
            str(raised.exception), f"ca:{path}: needs pyOpenSSL (pip install 'txgearmand[tls]')"
        )

    def test_fingerprint_spellings(self) -> None:
        """
        A fingerprint is read with or without colons, in any case, after
        C{sha256:}, C{SHA256=} or OpenSSL's C{sha256 Fingerprint=}.
        """
        digest = bytes(range(32))
        plain = digest.hex()
        colons = ":".join(plain[i : i + 2] for i in range(0, 64, 2))
        for text in [
            plain,
            plain.upper(),
            colons,
            colons.upper(),
            "sha256:" + plain,
            "SHA256=" + colons.upper(),
            "sha256 Fingerprint=" + colons.upper(),
            "SHA256 Fingerprint=" + colons,
            " " + colons + " ",
        ]:
            self.assertEqual(parse_fingerprint(text), digest, text)


class MatchingTests(SynchronousTestCase):
    """
    L{AccessRules.allows} and L{AccessRules.matching} with identities made
    by hand.
    """

    def test_addresses(self) -> None:
        """
        An address rule matches that address only; a network rule every
        address in it, of its own family.
        """
        rules = AccessRules(["127.0.0.0/8", "192.0.2.7", "fd00::/8"])
        allowed = ["127.0.0.1", "127.255.0.9", "192.0.2.7", "fd00::1", "fdff::2"]
        refused = ["192.0.2.8", "10.0.0.1", "::1", "fe80::1", "not an address", ""]
        for address in allowed:
            self.assertTrue(rules.allows(PeerIdentity(address=address)), address)
        for address in refused:
            self.assertFalse(rules.allows(PeerIdentity(address=address)), address)
        self.assertFalse(rules.allows(PeerIdentity()))
        self.assertFalse(rules.allows(PeerIdentity(unix=True)))

    def test_ipv4_mapped(self) -> None:
        """
        An IPv4 peer of an IPv6 socket (C{::ffff:a.b.c.d}) matches IPv4
        rules, and an IPv4 peer matches a rule written in the mapped form.
        """
        self.assertTrue(AccessRules("10.0.0.0/8").allows(PeerIdentity(address="::ffff:10.1.2.3")))
        self.assertFalse(AccessRules("10.0.0.0/8").allows(PeerIdentity(address="::ffff:11.0.0.1")))
        self.assertTrue(AccessRules("::ffff:10.1.2.3").allows(PeerIdentity(address="10.1.2.3")))
        self.assertTrue(AccessRules("::ffff:0:0/96").allows(PeerIdentity(address="127.0.0.1")))

    def test_ipv6_scope(self) -> None:
        """
        A link-local peer's zone (C{%eth0}) does not stop it matching.
        """
        rules = AccessRules("fe80::/10")
        self.assertTrue(rules.allows(PeerIdentity(address="fe80::1%eth0")))

    def test_unix(self) -> None:
        """
        C{unix} matches UNIX-socket peers only.
        """
        rules = AccessRules("unix")
        self.assertTrue(rules.allows(PeerIdentity(unix=True)))
        self.assertFalse(rules.allows(PeerIdentity(address="127.0.0.1")))

    def test_fingerprint(self) -> None:
        """
        C{cert:} matches the certificate with that SHA-256 digest, and
        nothing without a certificate.
        """
        der = b"0\x82 a certificate, as far as this test cares"
        rules = AccessRules(["cert:" + _digest(der).upper()])
        self.assertTrue(rules.allows(PeerIdentity(address="192.0.2.1", certificate=der)))
        self.assertFalse(rules.allows(PeerIdentity(address="192.0.2.1", certificate=der + b"!")))
        self.assertFalse(rules.allows(PeerIdentity(address="192.0.2.1")))

    def test_ca(self) -> None:
        """
        C{ca:} matches a certificate that CA signed, or one signed by an
        intermediate CA the peer sent along; not one of another CA, a
        self-signed one, an expired one, an intermediate missing, or no
        certificate.
        """
        pki = _pki.make_pki(Path(self.mktemp()))
        rules = AccessRules([f"ca:{pki.ca.cert}"])
        expired = _pki.make(pki.directory, "expired", pki.ca, days=-1)
        self.assertTrue(rules.allows(PeerIdentity(certificate=pki.alice.der)))
        self.assertTrue(
            rules.allows(PeerIdentity(certificate=pki.carol.der, chain=(pki.intermediate.der,)))
        )
        for refused in [
            PeerIdentity(certificate=pki.carol.der),
            PeerIdentity(certificate=pki.mallory.der),
            PeerIdentity(certificate=pki.selfsigned.der),
            PeerIdentity(certificate=expired.der),
            PeerIdentity(certificate=b"not DER at all"),
            PeerIdentity(address="127.0.0.1"),
        ]:
            self.assertFalse(rules.allows(refused), refused)

    def test_ca_client_certificates_only(self) -> None:
        """
        C{ca:} does not take the CA's own certificate, nor one its CA made
        for servers only (extended key usage without client
        authentication).
        """
        pki = _pki.make_pki(Path(self.mktemp()))  # Skips without TLS.
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        rules = AccessRules([f"ca:{pki.ca.cert}"])
        self.assertFalse(rules.allows(PeerIdentity(certificate=pki.ca.der)))
        self.assertFalse(
            rules.allows(PeerIdentity(certificate=pki.intermediate.der, chain=(pki.ca.der,)))
        )

        def leaf(purposes: list[x509.ObjectIdentifier]) -> bytes:
            now = pki.ca._certificate.not_valid_before_utc
            builder = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
                .issuer_name(pki.ca._certificate.subject)
                .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now)
                .not_valid_after(pki.ca._certificate.not_valid_after_utc)
                .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
            )
            certificate = builder.sign(pki.ca._private_key, hashes.SHA256())
            return certificate.public_bytes(serialization.Encoding.DER)

        self.assertFalse(
            rules.allows(PeerIdentity(certificate=leaf([ExtendedKeyUsageOID.SERVER_AUTH])))
        )
        self.assertTrue(
            rules.allows(
                PeerIdentity(
                    certificate=leaf(
                        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                    )
                )
            )
        )

    def test_any_rule(self) -> None:
        """
        A peer is allowed when any rule matches; L{AccessRules.matching}
        names the first that does.
        """
        rules = AccessRules(["10.0.0.0/8", "unix", "10.1.0.0/16"])
        self.assertEqual(rules.matching(PeerIdentity(address="10.1.2.3")), "10.0.0.0/8")
        self.assertEqual(rules.matching(PeerIdentity(unix=True)), "unix")
        self.assertIsNone(rules.matching(PeerIdentity(address="192.0.2.1")))
        self.assertIsNone(AccessRules().matching(PeerIdentity()))


class _FakeTLSConnection:
    def __init__(self, chain: Optional[list[Any]]) -> None:
        self.chain = chain

    def get_peer_cert_chain(self) -> Optional[list[Any]]:
        return self.chain


class _FakeTLSTransport(StringTransport):
    """
    A transport with a peer certificate, as Twisted's TLS transports have.
    """

    def __init__(self, peer: Any, certificate: Any, chain: Optional[list[Any]]) -> None:
        super().__init__(peerAddress=peer)
        self.certificate = certificate
        self.connection = _FakeTLSConnection(chain)

    def getPeerCertificate(self) -> Any:
        return self.certificate

    def getHandle(self) -> Any:
        return self.connection


class IdentityTests(SynchronousTestCase):
    """
    L{identity_of} reads a transport; L{identity_of_peer} any peer.
    """

    def test_addresses(self) -> None:
        """
        TCP peers give their address (no port), UNIX ones C{unix}.
        """
        self.assertEqual(
            identity_of(StringTransport(peerAddress=REMOTE)), PeerIdentity(address="192.0.2.7")
        )
        self.assertEqual(
            identity_of(StringTransport(peerAddress=LOCAL6)), PeerIdentity(address="::1")
        )
        self.assertEqual(identity_of(StringTransport(peerAddress=UNIX)), PeerIdentity(unix=True))
        self.assertEqual(identity_of(object()), PeerIdentity())
        self.assertEqual(identity_of(None, LOCAL), PeerIdentity(address="127.0.0.1"))

    def test_certificate(self) -> None:
        """
        A TLS transport gives the client's certificate and the chain it
        sent, as DER.
        """
        _pki.require_tls()
        from OpenSSL import crypto

        pki = _pki.make_pki(Path(self.mktemp()))

        def x509(identity: _pki.Identity) -> Any:
            return crypto.load_certificate(crypto.FILETYPE_ASN1, identity.der)

        transport = _FakeTLSTransport(REMOTE, x509(pki.carol), [x509(pki.intermediate)])
        self.assertEqual(
            identity_of(transport),
            PeerIdentity(
                address="192.0.2.7", certificate=pki.carol.der, chain=(pki.intermediate.der,)
            ),
        )
        self.assertEqual(
            identity_of(_FakeTLSTransport(REMOTE, x509(pki.alice), None)),
            PeerIdentity(address="192.0.2.7", certificate=pki.alice.der),
        )
        self.assertEqual(
            identity_of(_FakeTLSTransport(REMOTE, None, None)), PeerIdentity(address="192.0.2.7")
        )

    def test_peers(self) -> None:
        """
        An L{IIdentifiedPeer} says who it is; other peers are nobody.
        """

        @implementer(IIdentifiedPeer)
        class Known:
            def identity(self) -> PeerIdentity:
                return PeerIdentity(unix=True)

        self.assertEqual(identity_of_peer(Known()), PeerIdentity(unix=True))
        self.assertEqual(identity_of_peer(RecordingPeer()), PeerIdentity())

    def test_in_process(self) -> None:
        """
        In-process connections (a socketpair of the server's own) are
        C{unix} peers.
        """
        from twisted.internet import reactor

        from txgearmand.protocol import GearmanProtocol
        from txgearmand.server import JobServer

        server = JobServer(reactor, job_handle_prefix=b"H:t")
        server.startService()
        self.addCleanup(server.stopService)
        sock = server.to_inprocess_server()
        self.addCleanup(sock.close)
        (participant,) = server.clients()
        peer = participant.peer
        assert isinstance(peer, GearmanProtocol)
        self.assertEqual(peer.identity(), PeerIdentity(unix=True))
        peer.close()


class SettingsTests(SynchronousTestCase):
    """
    L{Settings.admin_allow}.
    """

    def test_values(self) -> None:
        """
        It takes rule strings, one string, or an L{AccessRules}; none by
        default.
        """
        self.assertEqual(Settings().admin_allow, AccessRules())
        self.assertEqual(Settings(admin_allow=["unix", "::1"]).admin_allow.rules, ("unix", "::1"))
        self.assertEqual(Settings(admin_allow="unix").admin_allow.rules, ("unix",))
        rules = AccessRules("unix")
        self.assertIs(Settings(admin_allow=rules).admin_allow, rules)
        self.assertIs(attrs.evolve(Settings(admin_allow=rules), wakeup=1).admin_allow, rules)

    def test_bad(self) -> None:
        """
        A bad rule is a L{SettingsError} for C{admin_allow}.
        """
        with self.assertRaises(SettingsError) as raised:
            Settings(admin_allow=["unix", "nowhere"])
        self.assertEqual(raised.exception.setting, "admin_allow")
        self.assertIn("nowhere: not an address", raised.exception.reason)


# -- the admin commands ---------------------------------------------------------


class _LogCapture:
    def __init__(self, test: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        test.addCleanup(globalLogPublisher.removeObserver, observer)

    def refusals(self) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("log_namespace") == "txgearmand.admin"
            and "Refused admin command" in str(e.get("log_format"))
        ]


#: A mutating command, a harmless argument, and its reply when allowed.
MUTATING = [
    (b"cancel job H:test:404", b"cancel+job", b"ERR UNKNOWN_JOB\r\n"),
    (b"cancel", b"cancel+job", b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"),
    (b"maxqueue fa 3", b"maxqueue", b"OK\r\n"),
    (b"maxqueue fa", b"maxqueue", b"OK\r\n"),
    (b"create function made", b"create+function", b"OK\r\n"),
    (b"drop function nothing", b"drop+function", b"ERR function not found\r\n"),
    (b"verbose DEBUG", b"verbose", b"OK INFO\n"),
]

#: Read-only commands (and the read-only forms of maxqueue and verbose).
READ_ONLY = [
    b"status",
    b"prioritystatus",
    b"workers",
    b"version",
    b"getpid",
    b"show jobs",
    b"show unique jobs",
    b"jobs",
    b"clients",
    b"limits",
    b"maxqueue",
    b"verbose",
    b"bogus",
]


class AdminAccessTests(ServerTestMixin, SynchronousTestCase):
    """
    The admin commands under C{admin_allow} rules, over in-memory
    connections from various addresses.
    """

    def reply(self, peer: Any, line: bytes) -> bytes:
        return self.connect(peer).admin(line)

    def test_default_open(self) -> None:
        """
        Without rules every mutating command is open to anyone (the
        replies are those of C{test_admin}).
        """
        self.make_server()
        for line, _, answer in MUTATING:
            self.assertEqual(self.reply(REMOTE, line), answer, line)

    def test_refused(self) -> None:
        """
        With rules, a peer none matches gets C{ERR PERMISSION_DENIED}
        naming the command, for every mutating command, whatever its
        arguments; nothing changes; it is logged at INFO with the peer and
        the command.
        """
        log = _LogCapture(self)
        self.make_server(admin_allow=["127.0.0.0/8"])
        self.server.set_max_queue(b"fa", 7)
        for line, what, _ in MUTATING:
            self.assertEqual(self.reply(REMOTE, line), DENIED % what, line)
        self.assertEqual(self.server.registry.limits(b"fa"), (7, 7, 7))
        self.assertNotIn(b"made", self.reply(LOCAL, b"status"))
        refusals = log.refusals()
        self.assertEqual(len(refusals), len(MUTATING))
        self.assertEqual(refusals[0]["log_level"], LogLevel.info)
        text = formatEvent(refusals[0])
        self.assertRegex(
            text,
            r"^Refused admin command cancel job H:test:404 from 192\.0\.2\.7:\d+: "
            r"no --admin-allow rule allows it$",
        )

    def test_allowed(self) -> None:
        """
        A peer a rule matches gets the replies it gets without rules.
        """
        self.make_server(admin_allow=["192.0.2.0/24"])
        for line, _, answer in MUTATING:
            self.assertEqual(self.reply(REMOTE, line), answer, line)

    def test_read_only(self) -> None:
        """
        The read-only commands answer any peer as without rules.
        """
        self.make_server()
        open_replies = [self.reply(REMOTE, line) for line in READ_ONLY]
        self.make_server(admin_allow=["unix"])
        for line, expected in zip(READ_ONLY, open_replies):
            got = self.reply(REMOTE, line)
            if line in (b"workers", b"clients", b"getpid", b"limits"):
                self.assertFalse(got.startswith(b"ERR"), line)
            else:
                self.assertEqual(got, expected, line)

    def test_peer_kinds(self) -> None:
        """
        Each kind of connection is judged by what it is: IPv4, IPv6, UNIX.
        """
        self.make_server(admin_allow=["::1", "unix"])
        self.assertEqual(self.reply(LOCAL6, b"cancel job H:x"), b"ERR UNKNOWN_JOB\r\n")
        self.assertEqual(self.reply(UNIX, b"cancel job H:x"), b"ERR UNKNOWN_JOB\r\n")
        self.assertEqual(self.reply(LOCAL, b"cancel job H:x"), DENIED % b"cancel+job")
        mapped = IPv6Address("TCP", "::ffff:127.0.0.1", 5000)
        self.assertEqual(self.reply(mapped, b"cancel job H:x"), DENIED % b"cancel+job")
        self.make_server(admin_allow=["127.0.0.1"])
        self.assertEqual(self.reply(mapped, b"cancel job H:x"), b"ERR UNKNOWN_JOB\r\n")

    def test_unidentified_peer(self) -> None:
        """
        A peer that cannot say who it is (not an L{IIdentifiedPeer}) is
        refused when there are rules, allowed when there are none.
        """
        from txgearmand import admin

        self.make_server(admin_allow=["0.0.0.0/0", "::/0", "unix"])
        self.assertEqual(
            admin.reply(self.server, RecordingPeer(), b"drop function f"), DENIED % b"drop+function"
        )
        self.make_server()
        self.assertEqual(
            admin.reply(self.server, RecordingPeer(), b"drop function f"),
            b"ERR function not found\r\n",
        )


class ShutdownTests(ServerTestMixin, SynchronousTestCase):
    """
    How C{admin_allow} and C{admin_shutdown} combine for C{shutdown}: both
    must let it through.
    """

    LOCAL_ONLY = b"ERR PERMISSION_DENIED shutdown+is+only+accepted+from+local+connections\r\n"
    UNKNOWN = b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"

    def shutdown(self, peer: Any, policy: str, rules: Sequence[str]) -> bytes:
        self.make_server(admin_shutdown=policy, admin_allow=list(rules))
        shutdowns: list[bool] = []
        self.server.on_shutdown = lambda: shutdowns.append(True)
        reply = self.connect(peer).admin(b"shutdown")
        self.assertEqual(bool(shutdowns), reply == b"OK\n", (peer, policy, rules))
        return reply

    def test_matrix(self) -> None:
        """
        Without rules, C{admin_shutdown} alone decides (as before); with
        rules, a peer needs a rule, and C{local} still keeps it to local
        peers; C{never} is an unknown command either way.
        """
        denied = DENIED % b"shutdown"
        cases = [
            (LOCAL, "local", [], b"OK\n"),
            (REMOTE, "local", [], self.LOCAL_ONLY),
            (REMOTE, "any", [], b"OK\n"),
            (LOCAL, "never", [], self.UNKNOWN),
            (LOCAL, "local", ["127.0.0.1"], b"OK\n"),
            (LOCAL, "local", ["unix"], denied),
            (UNIX, "local", ["unix"], b"OK\n"),
            (REMOTE, "local", ["192.0.2.7"], self.LOCAL_ONLY),
            (REMOTE, "any", ["192.0.2.7"], b"OK\n"),
            (REMOTE, "any", ["unix"], denied),
            (LOCAL, "any", ["unix"], denied),
            (LOCAL, "never", ["127.0.0.1"], self.UNKNOWN),
            (REMOTE, "never", ["unix"], self.UNKNOWN),
        ]
        for peer, policy, rules, expected in cases:
            self.assertEqual(self.shutdown(peer, policy, rules), expected, (peer, policy, rules))

    def test_local_refusal_logged(self) -> None:
        """
        A C{shutdown} refused for not being local is logged too.
        """
        log = _LogCapture(self)
        self.shutdown(REMOTE, "local", [])
        (event,) = log.refusals()
        self.assertIn("only accepted from local connections", formatEvent(event))


# -- client certificates on ssl: ports ------------------------------------------


class DescriptionTests(SynchronousTestCase):
    """
    L{clientcerts.split_description}: our parameters out of an C{ssl:}
    description.
    """

    def test_none(self) -> None:
        """
        A description without them is left as it is.
        """
        for description in ["tcp:4730", "ssl:4730:privateKey=k.pem", "unix:/a\\:b", "4730"]:
            self.assertEqual(clientcerts.split_description(description), (description, None))

    def test_split(self) -> None:
        """
        C{clientCA=} alone requires a certificate; C{clientCert=} says how
        much; escaped colons stay in values; C{clientCert=none} asks
        nothing.
        """
        want = clientcerts.ClientCertificates
        cases = {
            "ssl:4730:privateKey=k.pem:clientCA=ca.pem": (
                "ssl:4730:privateKey=k.pem",
                want("required", "ca.pem"),
            ),
            "ssl:4730:clientCA=C\\:\\\\ca.pem:privateKey=k.pem:clientCert=optional": (
                "ssl:4730:privateKey=k.pem",
                want("optional", "C:\\ca.pem"),
            ),
            "ssl:4730:clientCert=required:certKey=a\\:b.pem": (
                "ssl:4730:certKey=a\\:b.pem",
                want("required"),
            ),
            "ssl:4730:clientCert=optional": ("ssl:4730", want("optional")),
            "ssl:4730:clientCert=none": ("ssl:4730", None),
        }
        for description, expected in cases.items():
            self.assertEqual(clientcerts.split_description(description), expected, description)

    def test_errors(self) -> None:
        """
        Our parameters elsewhere than on C{ssl:}, twice, or with bad
        values are refused.
        """
        cases = {
            "tcp:4730:clientCA=ca.pem": "only for ssl: endpoints",
            "tls:/certs:clientCert=optional": "only for ssl: endpoints",
            "ssl:4730:clientCA=a.pem:clientCA=b.pem": "clientCA= is given twice",
            "ssl:4730:clientCert=maybe": "clientCert= must be one of required, optional, none",
            "ssl:4730:clientCA=": "clientCA= needs the path",
            "ssl:4730:clientCA=ca.pem:clientCert=none": "clientCert=none does not",
        }
        for description, message in cases.items():
            with self.assertRaises(ValueError) as raised:
                clientcerts.split_description(description)
            self.assertIn(message, str(raised.exception), description)


class EndpointTests(SynchronousTestCase):
    """
    L{clientcerts.server_from_string} and the TLS connections it makes.
    """

    def setUp(self) -> None:
        self.pki = _pki.make_pki(Path(self.mktemp()))
        self.base = (
            f"ssl:0:interface=127.0.0.1:privateKey={self.pki.server.key}"
            f":certKey={self.pki.server.cert}"
        )

    def test_plain(self) -> None:
        """
        Without our parameters it is Twisted's own endpoint.
        """
        from twisted.internet import endpoints

        endpoint = clientcerts.server_from_string(None, self.base)
        self.assertIsInstance(endpoint, endpoints.SSL4ServerEndpoint)
        self.assertNotIsInstance(
            endpoint._sslContextFactory,  # type: ignore[attr-defined]
            clientcerts._AskingForClientCertificates,
        )

    def test_modes(self) -> None:
        """
        The connections it makes ask for a client certificate, require it
        with C{required}, and trust the C{clientCA=} file (named in the
        request).
        """
        from OpenSSL import SSL

        cases = [
            (f":clientCA={self.pki.ca.cert}", True, True),
            (f":clientCA={self.pki.ca.cert}:clientCert=optional", False, True),
            (":clientCert=required", True, False),
            (":clientCert=optional", False, False),
        ]
        for extra, required, named in cases:
            endpoint = clientcerts.server_from_string(None, self.base + extra)
            creator = endpoint._sslContextFactory  # type: ignore[attr-defined]
            connection = creator.serverConnectionForTLS(None)
            again = creator.serverConnectionForTLS(None)
            context = connection.get_context()
            self.assertIs(again.get_context(), context)
            mode = context.get_verify_mode()
            self.assertTrue(mode & SSL.VERIFY_PEER, extra)
            self.assertEqual(bool(mode & SSL.VERIFY_FAIL_IF_NO_PEER_CERT), required, extra)
            names = [n.CN for n in connection.get_client_ca_list()]
            self.assertEqual(names, ["ca"] if named else [], extra)
            self.assertEqual(endpoint._port, 0)  # type: ignore[attr-defined]
            self.assertEqual(endpoint._interface, "127.0.0.1")  # type: ignore[attr-defined]
        # (Twisted's own TLS settings pass pyOpenSSL objects that newer
        # pyOpenSSL calls deprecated; not ours to change.)
        self.flushWarnings()

    def test_bad_ca_file(self) -> None:
        """
        A C{clientCA=} file that is missing or holds no certificate is a
        C{ValueError} naming it.
        """
        empty = self.pki.directory / "empty.pem"
        empty.write_text("")
        for path, message in [
            ("/nonexistent/ca.pem", "cannot read it"),
            (str(empty), "no PEM certificate in it"),
            (str(self.pki.ca.key), "no PEM certificate in it"),
        ]:
            with self.assertRaises(ValueError) as raised:
                clientcerts.server_from_string(None, f"{self.base}:clientCA={path}")
            self.assertIn(f"clientCA={path}: {message}", str(raised.exception))


class OptionTests(SynchronousTestCase):
    """
    C{--admin-allow} on the command line.
    """

    def options(self, *argv: str) -> tap.GearmandOptions:
        options = tap.GearmandOptions()
        options.parseOptions(["--queue=memory", *argv])
        return options

    def test_default(self) -> None:
        """
        No rule by default.
        """
        self.assertEqual(self.options()["settings"].admin_allow, AccessRules())

    def test_repeated(self) -> None:
        """
        Each C{--admin-allow} adds a rule, in order.
        """
        settings = self.options(
            "--admin-allow", "10.0.0.0/8", "--admin-allow=unix", "--admin-allow", "::1"
        )["settings"]
        self.assertEqual(settings.admin_allow.rules, ("10.0.0.0/8", "unix", "::1"))

    def test_bad(self) -> None:
        """
        A bad rule is a usage error naming C{--admin-allow} and the rule.
        """
        with self.assertRaises(usage.UsageError) as raised:
            self.options("--admin-allow=unix", "--admin-allow=10.0.0.1/8")
        self.assertTrue(str(raised.exception).startswith("--admin-allow 10.0.0.1/8: "))

    def test_bad_client_ca(self) -> None:
        """
        A port whose C{clientCA=} cannot be read is a usage error naming
        the port.
        """
        pki = _pki.make_pki(Path(self.mktemp()))
        port = (
            f"ssl:0:privateKey={pki.server.key}:certKey={pki.server.cert}"
            ":clientCA=/nonexistent/ca.pem"
        )
        with self.assertRaises(usage.UsageError) as raised:
            self.options(f"--port={port}")
        self.assertIn(f"--port {port}: clientCA=/nonexistent/ca.pem", str(raised.exception))

    def test_help(self) -> None:
        """
        C{--help} shows the option on one paragraph.
        """
        text = str(tap.GearmandOptions())
        self.assertIn("--admin-allow=", text)
        self.assertIn("cert:SHA256-FINGERPRINT", text)


class StartFailureTests(SynchronousTestCase):
    """
    A bad rule or client CA, as an operator meets it: one line, exit 1.
    """

    def twistd(self, *gearmand: str) -> str:
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        result = subprocess.run(
            [sys.executable, "-c", _process._TWISTD, "-n", "--pidfile=", "gearmand", *gearmand],
            cwd=workdir,
            env=_process.environment(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(len(output.strip().splitlines()), 1, output)
        self.assertEqual(list(workdir.iterdir()), [])
        return output

    def test_bad_rules(self) -> None:
        """
        Each bad rule stops the start with one line naming
        C{--admin-allow} and the rule.
        """
        for rule in ["10.1.0.0/8", "cert:1234", "ca:/nonexistent/ca.pem", "host.example.com"]:
            output = self.twistd("--admin-allow", "unix", "--admin-allow", rule)
            self.assertTrue(output.startswith(f"twistd gearmand: --admin-allow {rule}: "), output)

    def test_bad_client_ca(self) -> None:
        """
        So does an C{ssl:} port whose C{clientCA=} cannot be read, naming
        the port.
        """
        pki = _pki.make_pki(Path(self.mktemp()).resolve())
        port = (
            f"ssl:{_process.free_port()}:interface=127.0.0.1:privateKey={pki.server.key}"
            f":certKey={pki.server.cert}:clientCA={pki.server.key}"
        )
        output = self.twistd(f"--port={port}")
        self.assertIn(f"--port {port}: clientCA={pki.server.key}: no PEM certificate", output)


# -- end to end: a twistd gearmand process ------------------------------------


def _read_reply(sock: socket.socket, line: bytes) -> bytes:
    """
    Send an admin line; read its reply (one OK/ERR line, or up to C{.}).
    """
    sock.sendall(line + b"\r\n")
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\n") and (
            data.startswith((b"OK", b"ERR")) or data == b".\n" or data.endswith(b"\n.\n")
        ):
            break
    return data


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class _ProcessMixin:
    """
    A C{twistd gearmand} for a test, with more ports than its TCP one.
    """

    def start_server(self, *options: str) -> _process.Server:
        test = cast(SynchronousTestCase, self)
        self.workdir = Path(test.mktemp()).resolve()
        self.workdir.mkdir(parents=True)
        server = _process.twistd_gearmand(self.workdir, "--queue=memory", *options)
        server.start()
        test.addCleanup(server.stop)
        return server

    def connect(self, family: int, address: Any) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        cast(SynchronousTestCase, self).addCleanup(sock.close)
        sock.connect(address)
        return sock

    def refused_lines(self, server: _process.Server) -> list[str]:
        return [line for line in server.log().splitlines() if "Refused admin command" in line]


class TCPAndUNIXTests(_ProcessMixin, SynchronousTestCase):
    """
    C{--admin-allow} rules against a real server, over TCP on 127.0.0.1
    and ::1 (and IPv4 through an IPv6 socket), and a UNIX socket.
    """

    def ports(self) -> tuple[list[str], dict[str, tuple[int, Any]]]:
        """
        Extra ports: ::1 and ::ffff:127.0.0.1 (if this host has IPv6) and
        a UNIX socket; how to reach each.
        """
        # A short directory: a UNIX socket's path has at most 107 bytes.
        base = tempfile.mkdtemp(prefix="txg-access-")
        cast(SynchronousTestCase, self).addCleanup(shutil.rmtree, base, True)
        path = os.path.join(base, "g.sock")
        options = [f"--port=unix:{path}"]
        where: dict[str, tuple[int, Any]] = {"unix": (socket.AF_UNIX, path)}
        if _ipv6_loopback():
            v6, mapped = _process.free_port(), _process.free_port()
            options += [
                f"--port=tcp6:{v6}:interface=\\:\\:1",
                f"--port=tcp6:{mapped}:interface=\\:\\:ffff\\:127.0.0.1",
            ]
            where["::1"] = (socket.AF_INET6, ("::1", v6))
            where["mapped"] = (socket.AF_INET, ("127.0.0.1", mapped))
        return options, where

    def outcomes(
        self, server: _process.Server, where: dict[str, tuple[int, Any]]
    ) -> dict[str, bytes]:
        out = {
            "127.0.0.1": _read_reply(
                self.connect(socket.AF_INET, ("127.0.0.1", server.port)), b"cancel job H:none:1"
            )
        }
        for name, (family, address) in where.items():
            out[name] = _read_reply(self.connect(family, address), b"cancel job H:none:1")
        return out

    def test_ipv4_rule(self) -> None:
        """
        C{127.0.0.0/8}: 127.0.0.1 may, also through an IPv6 socket; ::1
        and the UNIX socket may not, but they may read.
        """
        options, where = self.ports()
        server = self.start_server(*options, "--admin-allow=127.0.0.0/8")
        got = self.outcomes(server, where)
        allowed = b"ERR UNKNOWN_JOB\r\n"
        refused = DENIED % b"cancel+job"
        expected = {"127.0.0.1": allowed, "unix": refused}
        if "::1" in where:
            expected.update({"::1": refused, "mapped": allowed})
        self.assertEqual(got, expected)
        family, address = where["unix"]
        self.assertEqual(_read_reply(self.connect(family, address), b"status"), b".\n")
        self.assertEqual(len(self.refused_lines(server)), sum(v == refused for v in got.values()))
        self.assertIn("Refused admin command cancel job H:none:1 from unix:", server.log())

    def test_ipv6_and_unix_rules(self) -> None:
        """
        C{::1} and C{unix}: those may, 127.0.0.1 may not; and C{shutdown}
        (local by C{--admin-shutdown}) from 127.0.0.1 is refused by the
        rules, from the UNIX socket it is done.
        """
        if not _ipv6_loopback():
            raise SkipTest("this host has no IPv6 loopback (::1)")
        options, where = self.ports()
        server = self.start_server(*options, "--admin-allow", "::1", "--admin-allow", "unix")
        got = self.outcomes(server, where)
        allowed = b"ERR UNKNOWN_JOB\r\n"
        refused = DENIED % b"cancel+job"
        self.assertEqual(
            got, {"127.0.0.1": refused, "mapped": refused, "::1": allowed, "unix": allowed}
        )
        tcp = self.connect(socket.AF_INET, ("127.0.0.1", server.port))
        self.assertEqual(_read_reply(tcp, b"shutdown"), DENIED % b"shutdown")
        family, address = where["unix"]
        self.assertEqual(_read_reply(self.connect(family, address), b"shutdown"), b"OK\n")
        self.assertEqual(server.wait(TIMEOUT), 0)

    def test_no_rules(self) -> None:
        """
        Without rules, every peer may, as before.
        """
        options, where = self.ports()
        server = self.start_server(*options)
        got = self.outcomes(server, where)
        self.assertEqual(set(got.values()), {b"ERR UNKNOWN_JOB\r\n"}, got)
        self.assertEqual(self.refused_lines(server), [])


class _TLSMixin(_ProcessMixin):
    """
    A server with an C{ssl:} port, and TLS clients for it.

    @ivar ca_file: the CA clients trust for the server's certificate.
    @ivar tls_port: the C{ssl:} port.
    """

    ca_file: Path
    tls_port: int

    def make_pki(self) -> _pki.PKI:
        """
        Certificates for this test (C{self.pki}), and a port for TLS.
        """
        self.pki = _pki.make_pki(Path(cast(SynchronousTestCase, self).mktemp()).resolve())
        self.ca_file = self.pki.ca.cert
        self.tls_port = _process.free_port()
        return self.pki

    def ssl_port(self, extra: str) -> str:
        """
        The C{--port} option of an C{ssl:} port with the server's
        certificate, and C{extra} parameters.
        """
        return (
            f"--port=ssl:{self.tls_port}:interface=127.0.0.1:privateKey={self.pki.server.key}"
            f":certKey={self.pki.server.cert}{extra}"
        )

    def chain_file(self, identity: _pki.Identity, *more: _pki.Identity) -> Path:
        """
        A PEM file with a certificate and the intermediates it needs.
        """
        path = self.pki.directory / f"{identity.cert.stem}-chain.pem"
        path.write_bytes(b"".join(i.cert.read_bytes() for i in (identity, *more)))
        return path

    def tls(self, who: Optional[_pki.Identity], cert_file: Optional[Path] = None) -> ssl.SSLSocket:
        """
        A TLS connection that checks the server's certificate, with a client
        certificate or without.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(str(self.ca_file))
        if who is not None:
            context.load_cert_chain(str(cert_file or who.cert), str(who.key))
        sock = self.connect(socket.AF_INET, ("127.0.0.1", self.tls_port))
        tls = context.wrap_socket(sock, server_hostname="127.0.0.1")
        cast(SynchronousTestCase, self).addCleanup(tls.close)
        return tls

    def admin(
        self, who: Optional[_pki.Identity], line: bytes, cert_file: Optional[Path] = None
    ) -> bytes:
        return _read_reply(self.tls(who, cert_file), line)

    def turned_away(self, who: Optional[_pki.Identity]) -> bool:
        """
        Whether a TLS client is refused: the handshake fails, or (TLS 1.3)
        the connection ends, unanswered, at its first request.
        """
        try:
            tls = self.tls(who)
            return _read_reply(tls, b"version") == b""
        except (ssl.SSLError, ConnectionError):
            return True

    def gear_round_trip(self, who: _pki.Identity) -> str:
        """
        A C{gear} worker and client over TLS with C{who}'s certificate: the
        result of a job.
        """
        if gear is None:
            raise SkipTest("the gear package is not installed (pip install gear)")
        test = cast(SynchronousTestCase, self)
        files = dict(ssl_key=str(who.key), ssl_cert=str(who.cert), ssl_ca=str(self.ca_file))
        worker = gear.Worker("tls-worker")
        test.addCleanup(worker.shutdown)
        worker.addServer("127.0.0.1", self.tls_port, **files)
        worker.waitForServer(timeout=TIMEOUT)
        worker.registerFunction("reverse")

        def work() -> None:
            try:
                job = worker.getJob()
            except gear.InterruptedError:
                return
            job.sendWorkComplete(job.arguments[::-1])

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        client = gear.Client("tls-client")
        test.addCleanup(client.shutdown)
        client.addServer("127.0.0.1", self.tls_port, **files)
        client.waitForServer(timeout=TIMEOUT)
        job = gear.TextJob("reverse", "stressed")
        client.submitJob(job, timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while not job.complete and time.monotonic() < deadline:
            time.sleep(0.02)
        thread.join(TIMEOUT)
        test.assertTrue(job.complete, "the job did not complete over TLS")
        return "".join(job.data)

    def gear_refused(self, who: _pki.Identity) -> bool:
        """
        Whether a C{gear} client with C{who}'s certificate cannot connect.
        """
        if gear is None:
            raise SkipTest("the gear package is not installed (pip install gear)")
        client = gear.Client("tls-stranger")
        cast(SynchronousTestCase, self).addCleanup(client.shutdown)
        client.addServer(
            "127.0.0.1",
            self.tls_port,
            ssl_key=str(who.key),
            ssl_cert=str(who.cert),
            ssl_ca=str(self.ca_file),
        )
        try:
            client.waitForServer(timeout=3)
        except gear.TimeoutError:
            return True
        return False


class RequiredClientCertificateTests(_TLSMixin, SynchronousTestCase):
    """
    An C{ssl:} port with C{clientCA=}: only clients with a certificate
    from that CA are served; C{cert:} rules pick who may change the
    server.
    """

    def setUp(self) -> None:
        pki = self.make_pki()
        self.server = self.start_server(
            self.ssl_port(f":clientCA={pki.ca.cert}"),
            f"--admin-allow=cert:{pki.alice.colons()}",
            f"--admin-allow=cert:sha256:{pki.carol.fingerprint}",
        )

    def test_round_trip(self) -> None:
        """
        A C{gear} client and worker with certificates from the CA: a job
        goes round.
        """
        self.assertEqual(self.gear_round_trip(self.pki.alice), "desserts")

    def test_missing_certificate(self) -> None:
        """
        A client without a certificate is refused at the handshake, and so
        are certificates from another CA or self-signed (by Python's TLS
        and by C{gear}).
        """
        self.assertTrue(self.turned_away(None))
        self.assertTrue(self.turned_away(self.pki.mallory))
        self.assertTrue(self.turned_away(self.pki.selfsigned))
        self.assertTrue(self.gear_refused(self.pki.mallory))
        self.assertFalse(self.turned_away(self.pki.bob))

    def test_fingerprint_rules(self) -> None:
        """
        Alice's fingerprint is in the rules: she may cancel; Bob's is not:
        he is refused, and may still read. Carol (from an intermediate CA
        she sends) is in the rules too. The TCP port, without a
        certificate, is refused.
        """
        self.assertEqual(self.admin(self.pki.alice, b"cancel job H:none:1"), b"ERR UNKNOWN_JOB\r\n")
        self.assertEqual(self.admin(self.pki.bob, b"cancel job H:none:1"), DENIED % b"cancel+job")
        self.assertEqual(self.admin(self.pki.bob, b"status"), b".\n")
        carol = self.chain_file(self.pki.carol, self.pki.intermediate)
        self.assertEqual(
            self.admin(self.pki.carol, b"drop function x", carol), b"ERR function not found\r\n"
        )
        tcp = self.connect(socket.AF_INET, ("127.0.0.1", self.server.port))
        self.assertEqual(_read_reply(tcp, b"drop function x"), DENIED % b"drop+function")
        self.assertEqual(len(self.refused_lines(self.server)), 2)


class OptionalClientCertificateTests(_TLSMixin, SynchronousTestCase):
    """
    An C{ssl:} port with C{clientCert=optional} and no CA: everyone is
    served; C{ca:} and C{cert:} rules say who may change the server.
    """

    def setUp(self) -> None:
        pki = self.make_pki()
        self.server = self.start_server(
            self.ssl_port(":clientCert=optional"),
            f"--admin-allow=ca:{pki.ca.cert}",
            f"--admin-allow=cert:{pki.selfsigned.fingerprint.upper()}",
        )

    def test_who(self) -> None:
        """
        Without a certificate a client is served but may not change the
        server; with one from the CA (directly or through an intermediate
        it sends) or the self-signed one in the rules it may; another CA's
        may not.
        """
        allowed = b"OK\r\n"
        refused = DENIED % b"maxqueue"
        self.assertEqual(self.admin(None, b"version")[:3], b"OK ")
        self.assertEqual(self.admin(None, b"maxqueue f 1"), refused)
        self.assertEqual(self.admin(self.pki.alice, b"maxqueue f 1"), allowed)
        carol = self.chain_file(self.pki.carol, self.pki.intermediate)
        self.assertEqual(self.admin(self.pki.carol, b"maxqueue f 1", carol), allowed)
        self.assertEqual(self.admin(self.pki.carol, b"maxqueue f 1"), refused)
        self.assertEqual(self.admin(self.pki.selfsigned, b"maxqueue f 1"), allowed)
        self.assertEqual(self.admin(self.pki.mallory, b"maxqueue f 1"), refused)

    def test_round_trip(self) -> None:
        """
        A C{gear} client and worker with a self-signed certificate are
        served.
        """
        self.assertEqual(self.gear_round_trip(self.pki.selfsigned), "desserts")


# -- the guide's TLS set-up, as written ----------------------------------------

GUIDE = Path(_process.PACKAGE_ROOT) / "docs" / "guide" / "access.rst"


class GuideTests(_TLSMixin, SynchronousTestCase):
    """
    docs/guide/access.rst: its C{openssl} commands make a CA and
    certificates, and its C{twistd} command serves them: a C{gear} job
    goes round with alice's certificate, she may change the server,
    a certificate the CA did not sign is refused.
    """

    def test_guide(self) -> None:
        from txgearmand.test import test_docs

        if not GUIDE.exists():
            raise SkipTest(f"{GUIDE} is not here: run the tests from a source checkout")
        if shutil.which("openssl") is None or shutil.which("bash") is None:
            raise SkipTest("the openssl command (and bash) are needed to make the certificates")
        _pki.require_tls()
        blocks = test_docs.read_blocks(GUIDE)
        (make,) = [b for b in blocks if b.kind == "shell" and "openssl req" in b.text]
        (run,) = [b for b in blocks if b.kind == "literal" and b.text.startswith("twistd ")]
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        made = subprocess.run(
            ["bash", "-e", "-c", make.text],
            cwd=directory,
            capture_output=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertIn(b"Fingerprint=", made.stdout)
        for name in ["ca.pem", "server.pem", "server.key", "alice.pem", "alice.key"]:
            self.assertTrue((directory / name).exists(), name)
        alice = _pki.load(directory / "alice.pem", directory / "alice.key")
        stranger = _pki.make(directory, "stranger")
        self.ca_file = directory / "ca.pem"
        self.tls_port = _process.free_port()
        command = run.text.strip()
        self.assertIn(":4730:", command)
        command = command.replace(":4730:", f":{self.tls_port}:interface=127.0.0.1:", 1)
        python = f"{shlex.quote(sys.executable)} -c {shlex.quote(_process._TWISTD)}"
        script = f'twistd() {{ exec {python} "$@"; }}\n'
        script += command.replace("twistd -n ", "twistd -n --pidfile= --logfile=twistd.log ", 1)
        process = subprocess.Popen(
            ["bash", "-c", script],
            cwd=directory,
            env=_process.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def stop() -> None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(_process.STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(_process.STOP_TIMEOUT)

        self.addCleanup(stop)
        log = directory / "twistd.log"
        self.wait_for(lambda: self.answers(alice), process, log)
        self.assertEqual(self.gear_round_trip(alice), "desserts")
        self.assertEqual(self.admin(alice, b"cancel job H:none:1"), b"ERR UNKNOWN_JOB\r\n")
        self.assertTrue(self.turned_away(stranger))
        self.assertTrue(self.turned_away(None))

    def answers(self, who: _pki.Identity) -> bool:
        try:
            return self.admin(who, b"version").startswith(b"OK ")
        except OSError:
            return False

    def wait_for(
        self, ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path
    ) -> None:
        deadline = time.monotonic() + _process.START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if ready():
                return
            time.sleep(0.1)
        text = log.read_text(errors="replace") if log.exists() else "(no log)"
        self.fail(f"the guide's server did not answer over TLS:\n{text}")
