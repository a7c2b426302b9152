"""TLS material, contexts, and who may be on the other end of a link.

The identity tests run real TLS handshakes in memory (TLSMemoryBIOFactory
over iosim): the accepting parent checks the child's certificate name, the
dialing child checks the parent's, and OpenSSL refuses certificates from
elsewhere, expired ones, and none at all.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import ssl
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from cellsd.errors import CellUnreachable, ConfigError
from cellsd.links.tls import (
    TLSMaterial,
    certificate_names,
    diagnose_certificate,
    load_tls,
    match_peer,
)
from tests.unit.links_pki import CA, LinkPair, connect_link, expired, header, not_yet_valid


def _messages(events: Sequence[LogEvent]) -> str:
    return "\n".join(formatEvent(e) for e in events)


class MatchPeerTests(SynchronousTestCase):
    """match_peer: which configured neighbour a certificate names."""

    ca = CA.make()

    def test_exact_name(self) -> None:
        """The DNS name picks the candidate; others do not match."""
        cert = self.ca.issue("child1").cert
        self.assertEqual(match_peer(cert, ["child2", "child1"]), "child1")
        self.assertIsNone(match_peer(cert, ["child2"]))
        self.assertIsNone(match_peer(cert, []))

    def test_wildcard_refused(self) -> None:
        """A certificate with a wildcard DNS name matches nothing, even a
        name it also lists exactly."""
        for names in (["*"], ["*.cells.example"], ["child1", "*.example"]):
            cert = self.ca.issue("wild", dns_names=names).cert
            self.assertIsNone(match_peer(cert, ["child1", "x.cells.example"]), names)

    def test_common_name_ignored(self) -> None:
        """Without a subjectAltName the common name does not count."""
        cert = self.ca.issue("child1", dns_names=()).cert
        self.assertEqual(certificate_names(cert), [])
        self.assertIsNone(match_peer(cert, ["child1"]))


class LoadTLSTests(SynchronousTestCase):
    """load_tls reads the [tls] files or says clearly what is wrong."""

    def setUp(self) -> None:
        # Not self.mktemp(): under pytest that writes into the working tree.
        self.dir = Path(tempfile.mkdtemp(prefix="cellsd-links-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.ca = CA.make()
        self.paths = self.ca.write(self.dir, "child1")

    def assert_config_error(self, key: str, text: str, *paths: Path) -> None:
        e = self.assertRaises(ConfigError, load_tls, *paths)
        self.assertEqual(e.kwargs["key"], key)
        self.assertIn(text, str(e))

    def test_loads(self) -> None:
        """Valid files give the CA, our certificate and key, and our name."""
        material = load_tls(*self.paths)
        self.assertIsInstance(material, TLSMaterial)
        self.assertEqual(material.name, "child1")
        self.assertEqual(material.ca.original.to_cryptography(), self.ca.cert)

    def test_unreadable(self) -> None:
        """A missing file names its key and path."""
        ca, cert, key = self.paths
        missing = self.dir / "nope.pem"
        self.assert_config_error("tls.ca", "cannot read", missing, cert, key)
        self.assert_config_error("tls.cert", str(missing), ca, missing, key)
        self.assert_config_error("tls.key", "cannot read", ca, cert, missing)

    def test_not_pem(self) -> None:
        """A file that is not PEM of the right kind is named as such."""
        ca, cert, key = self.paths
        junk = self.dir / "junk.pem"
        junk.write_bytes(b"hello")
        self.assert_config_error("tls.ca", "not a PEM certificate", junk, cert, key)
        self.assert_config_error("tls.cert", "not a PEM certificate", ca, junk, key)
        self.assert_config_error("tls.key", "not an unencrypted PEM", ca, cert, junk)
        self.assert_config_error("tls.key", "not an unencrypted PEM", ca, cert, ca)

    def test_wrong_key(self) -> None:
        """A key of another certificate is refused."""
        ca, cert, _ = self.paths
        other = self.dir / "other.key"
        other.write_bytes(self.ca.issue("child2").key_pem)
        self.assert_config_error("tls.key", "is not the key of", ca, cert, other)

    def test_other_ca(self) -> None:
        """A certificate not issued by the configured CA is refused."""
        _, cert, key = self.paths
        other_ca = self.dir / "other-ca.pem"
        other_ca.write_bytes(CA.make("another CA").cert_pem)
        self.assert_config_error("tls.cert", "was not issued by the CA", other_ca, cert, key)


class DiagnoseTests(SynchronousTestCase):
    """What the logs say when a certificate fails verification."""

    ca = CA.make()

    def test_reasons(self) -> None:
        """Expired says renew, not yet valid says check the clocks, another
        CA says so; a good certificate has nothing to report."""
        self.assertIn(
            "expired",
            diagnose_certificate(self.ca.issue("a", **expired()).cert, self.ca.cert) or "",
        )
        self.assertIn(
            "check the clocks",
            diagnose_certificate(self.ca.issue("b", **not_yet_valid()).cert, self.ca.cert) or "",
        )
        other = CA.make("another CA").issue("c").cert
        self.assertIn("not issued by our CA", diagnose_certificate(other, self.ca.cert) or "")
        self.assertIsNone(diagnose_certificate(self.ca.issue("d").cert, self.ca.cert))


class IdentityTests(SynchronousTestCase):
    """Only the expected neighbour gets a link, and every refusal is logged
    with a reason an operator can act on."""

    ca = CA.make()

    def connect(self, **kwargs: Any) -> tuple[LinkPair, Sequence[LogEvent]]:
        kwargs.setdefault("parent_material", self.ca.material("api"))
        with capturedLogs() as events:
            pair = connect_link(**kwargs)
            pair.flush()
        return pair, events

    def assert_refused(self, pair: LinkPair) -> None:
        """No link came up, nothing reached a receiver, and a call through
        the dialing side fails as unreachable."""
        self.assertEqual(pair.ready, [])
        self.assertFalse(pair.child.ready or pair.parent.ready)
        d = pair.child.deliver(header(), b"{}", 5)
        pair.flush()
        self.failureResultOf(d, CellUnreachable)
        self.assertEqual(pair.parent_receiver.calls, [])
        self.assertEqual(pair.child_receiver.calls, [])

    def test_configured_child_accepted(self) -> None:
        """The configured child's certificate gives a link on both sides, over
        TLS 1.2 or later."""
        pair, _ = self.connect(child_material=self.ca.material("child1"))
        self.assertEqual(set(pair.ready), {pair.child, pair.parent})
        self.assertEqual(pair.parent.neighbour, "child1")
        self.assertEqual(pair.child.neighbour, "api")
        version = pair.parent.transport.getHandle().get_protocol_version_name()  # type: ignore[union-attr]  # a TLS transport
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))

    def test_one_of_several_children(self) -> None:
        """Any configured child is accepted, under its own name."""
        pair, _ = self.connect(
            child_material=self.ca.material("child2"), children=("child1", "child2")
        )
        self.assertEqual(pair.parent.neighbour, "child2")

    def test_sibling_refused(self) -> None:
        """A certificate from our CA naming another cell is aborted by the
        parent before any box (the dialer's Hello) is processed, and the
        refusal is logged with the name presented and the names expected."""
        pair, events = self.connect(child_material=self.ca.material("sibling"))
        self.assertIsNone(pair.parent.neighbour)
        self.assertIn("sibling", pair.parent.refusal or "")
        (event,) = [e for e in events if e.get("peer") == ["sibling"]]
        self.assertEqual(event["expected"], ["child1"])
        self.assertEqual(event["cell"], "api")
        self.assertIn("parent closed the link", pair.child.refusal or "")
        self.assert_refused(pair)

    def test_other_ca_refused(self) -> None:
        """A certificate from another CA is refused by TLS; the parent's log
        says it was not issued by our CA."""
        other = CA.make("another CA")
        # The child trusts our CA but its own certificate comes from another.
        child = TLSMaterial(
            ca=self.ca.certificate(), own=other.issue("child1").private_certificate()
        )
        pair, events = self.connect(child_material=child)
        self.assertIn("not issued by our CA", pair.parent.refusal or "")
        self.assertIn("not issued by our CA", _messages(events))
        self.assertIn("does not trust the CA", pair.child.refusal or "")
        self.assert_refused(pair)

    def test_expired_refused(self) -> None:
        """An expired certificate is refused; both logs say it expired."""
        pair, events = self.connect(child_material=self.ca.material("child1", **expired()))
        self.assertIn("expired", pair.parent.refusal or "")
        self.assertIn("pki issue", pair.parent.refusal or "")
        self.assertIn("our certificate has expired", pair.child.refusal or "")
        self.assertIn("'child1' expired", _messages(events))
        self.assert_refused(pair)

    def test_parent_not_yet_valid(self) -> None:
        """A parent certificate valid only from tomorrow is refused by the
        child, whose log tells the operator to check the clocks."""
        pair, events = self.connect(
            parent_material=self.ca.material("api", **not_yet_valid()),
            child_material=self.ca.material("child1"),
        )
        self.assertIn("check the clocks", pair.child.refusal or "")
        self.assertIn("check the clocks", _messages(events))
        self.assert_refused(pair)

    def test_no_client_certificate(self) -> None:
        """A client that presents no certificate is refused by TLS."""
        pair, _ = self.connect(child_material=None)
        self.assertIn("presented no client certificate", pair.parent.refusal or "")
        self.assertIn("requires a client certificate", pair.child.refusal or "")
        self.assert_refused(pair)

    def test_wildcard_refused(self) -> None:
        """A certificate carrying a wildcard is refused even though it also
        lists the child's name."""
        pair, _ = self.connect(
            child_material=self.ca.material("child1", dns_names=["child1", "*.example"])
        )
        self.assertIsNone(pair.parent.neighbour)
        self.assertIn("*.example", pair.parent.refusal or "")
        self.assert_refused(pair)

    def test_child_refuses_wrong_parent(self) -> None:
        """The child refuses a parent whose certificate names another cell,
        and says so in its log."""
        pair, events = self.connect(
            parent_material=self.ca.material("impostor"),
            child_material=self.ca.material("child1"),
        )
        self.assertIn("does not name the cell we dialed", pair.child.refusal or "")
        self.assertIn("does not name the cell we dialed", _messages(events))
        self.assert_refused(pair)

    def test_client_options_check_parent_name(self) -> None:
        """client_options uses the parent's name for verification: a parent
        certificate for 'api' is refused when dialing 'api2'."""
        pair, _ = self.connect(child_material=self.ca.material("child1"), parent_name="api2")
        self.assertIsNotNone(pair.child.refusal)
        self.assert_refused(pair)

    def test_client_with_plain_options(self) -> None:
        """The parent's checks do not depend on the client's options: a
        client trusting our CA and presenting a sibling certificate through
        hand-made options is refused the same way."""
        sibling = self.ca.material("sibling")
        creator = ssl.optionsForClientTLS(
            "api", trustRoot=sibling.ca, clientCertificate=sibling.own
        )
        pair, _ = self.connect(child_material=None, client_creator=creator)
        self.assertIn("sibling", pair.parent.refusal or "")
        self.assert_refused(pair)


class ReadinessTests(SynchronousTestCase):
    """The dialing side's link is up only once the parent has answered."""

    ca = CA.make()

    def test_when_ready(self) -> None:
        """when_ready fires with the protocol once the link is up, at once
        after that."""
        pair = connect_link(
            parent_material=self.ca.material("api"),
            child_material=self.ca.material("child1"),
            flush=False,
        )
        d = pair.child.when_ready()
        self.assertNoResult(d)
        pair.flush()
        self.assertIs(self.successResultOf(d), pair.child)
        self.assertIs(self.successResultOf(pair.parent.when_ready()), pair.parent)

    def test_when_ready_refused(self) -> None:
        """when_ready fails with CellUnreachable, giving the reason, when the
        link is refused, whether it was waiting then or asked afterwards."""
        pair = connect_link(
            parent_material=self.ca.material("api"),
            child_material=self.ca.material("sibling"),
            flush=False,
        )
        d = pair.child.when_ready()
        pair.flush()
        f = self.failureResultOf(d, CellUnreachable)
        self.assertIn("parent closed the link", f.getErrorMessage())
        self.failureResultOf(pair.parent.when_ready(), CellUnreachable)

    def test_hello_unanswered(self) -> None:
        """A parent that never answers Hello: the child gives up after the
        hello timeout, aborts, and says why; the link never counted as up."""
        pair = connect_link(
            parent_material=self.ca.material("api"),
            child_material=self.ca.material("child1"),
            flush=False,
        )
        pair.parent.ampBoxReceived = lambda box: None  # type: ignore[method-assign]  # a mute parent
        with capturedLogs() as events:
            pair.flush()
            self.assertNotIn(pair.child, pair.ready)
            pair.clock.advance(29)
            pair.flush()
            self.assertIsNone(pair.child.refusal)
            pair.clock.advance(2)
            pair.flush()
        self.assertIn("no answer to hello", pair.child.refusal or "")
        self.assertIn("did not accept the link", _messages(events))
        self.assertIn(pair.child, pair.lost)
        self.assertNotIn(pair.child, pair.ready)
