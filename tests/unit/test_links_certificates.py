"""The certificate matrix (issue 7, item 6): every certificate a link must
refuse, and what the operator sees on both ends.

Two levels, both over real TLS handshakes in memory:

* :class:`MatrixTests`: two :class:`NeighbourLinks` services (a listening
  cell and a dialing cell) on a MemoryReactorClock, joined by iosim's
  ConnectionCompleter. For each injected certificate: no link comes up on
  either side, no message reaches a receiver, the listening cell's log and
  ``link_states`` (``refused_unknown``, ``last_refusals``) name the refusal,
  the dialing cell's ``link_states`` reason and ``unreachable_reason`` say
  why, and nothing is logged as a traceback.
* :class:`EagerPeerTests`: the same certificates presented by a client that
  sends a Deliver box at once, before the handshake has even completed (and
  a client with no certificate, and one speaking plaintext AMP): no box is
  processed, and the early call fails as unreachable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import ConnectionCompleter, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from cellsd.errors import CellsError
from cellsd.links.neighbours import NeighbourLinks
from cellsd.links.protocol import CellLinkProtocol
from cellsd.links.tls import TLSMaterial, server_options
from tests.unit.link_settings import CellName as _Cell
from tests.unit.link_settings import Cells as _Cells
from tests.unit.link_settings import Neighbour as _Neighbour
from tests.unit.link_settings import Settings as _Settings
from tests.unit.links_pki import (
    CA,
    FakeReceiver,
    LinkPair,
    _Build,
    connect_link,
    expired,
    header,
    not_yet_valid,
    self_signed,
)

PORT = 7201


@attrs.frozen
class Seen:
    """What the operator of each cell sees after one attempt."""

    #: The listening cell's link_states() and log.
    listener_states: dict[str, Any]
    listener_log: str
    #: The dialing cell's link_states() row of its parent, and the reason a
    #: call to it fails at once.
    dialer_row: dict[str, Any]
    dialer_unreachable: str
    dialer_log: str
    events: Sequence[LogEvent]


def _text(events: Sequence[LogEvent], cell: str) -> str:
    return "\n".join(formatEvent(e) for e in events if e.get("cell") == cell)


class MatrixTests(SynchronousTestCase):
    """Each certificate that must be refused, between two NeighbourLinks."""

    ca = CA.make()

    def attempt(
        self,
        *,
        listener: str = "api",
        children: Sequence[str] = ("child1", "child2"),
        listener_material: TLSMaterial | None = None,
        dialer: str = "child1",
        dialer_material: TLSMaterial | None = None,
    ) -> Seen:
        """``dialer`` dials ``listener`` (whose [[children]] are
        ``children``) once, each presenting its material; both must refuse
        or be refused. Checks what holds in every case and returns what
        each side shows."""
        reactor = MemoryReactorClock()
        listener_receiver, dialer_receiver = FakeReceiver(listener), FakeReceiver(dialer)
        accepting = NeighbourLinks(
            reactor,
            _Settings(
                _Cell(listener),
                _Cells(listen=f"tcp:{PORT}:interface=127.0.0.1"),
                children=tuple(_Neighbour(c) for c in children),
            ),
            listener_material or self.ca.material(listener),
            listener_receiver,
        )
        dialing = NeighbourLinks(
            reactor,
            _Settings(
                _Cell(dialer),
                _Cells(),
                parents=(_Neighbour(listener, f"tcp:127.0.0.1:{PORT}", True),),
            ),
            dialer_material or self.ca.material(dialer),
            dialer_receiver,
            jitter=lambda: 0.0,
        )
        with capturedLogs() as events:
            accepting.startService()
            dialing.startService()
            pump = ConnectionCompleter(reactor).succeedOnce()
            assert pump is not None
            pump.flush()
            reactor.advance(0.1)
            pump.flush()
        self.addCleanup(accepting.stopService)
        self.addCleanup(dialing.stopService)

        # In every case: no link on either side, nothing reached a receiver,
        # the dialer has no link to hand out, and no traceback was logged.
        self.assertEqual(accepting.links(), [])
        self.assertEqual(dialing.links(), [])
        self.assertEqual(listener_receiver.calls, [])
        self.assertEqual(dialer_receiver.calls, [])
        self.assertIsNone(dialing.link_for(listener, True))
        failures = [formatEvent(e) for e in events if "log_failure" in e]
        self.assertEqual(failures, [], "a refusal was logged as a traceback")
        states = accepting.link_states()
        for child in children:
            self.assertFalse(states["children"][child]["up"])
        row = dialing.link_states()["parents"][listener]
        self.assertFalse(row["up"])
        self.assertEqual(row["refused"], 1)
        self.assertEqual(row["state"], "down")
        return Seen(
            listener_states=states,
            listener_log=_text(events, listener),
            dialer_row=row,
            dialer_unreachable=dialing.unreachable_reason(listener, True),
            dialer_log=_text(events, dialer),
            events=events,
        )

    def assert_listener_refused(self, seen: Seen, presented: str, why: str) -> None:
        """The listening cell counted one refusal under the presented name,
        with ``why`` as its last reason, and logged ``why``."""
        self.assertEqual(seen.listener_states["refused_unknown"], {presented: 1})
        self.assertIn(why, seen.listener_states["last_refusals"][presented])
        self.assertIn(why, seen.listener_log)

    def assert_dialer_told(self, seen: Seen, why: str) -> None:
        """The dialing cell's link_states reason, its unreachable_reason (what
        a call to the parent fails with at once) and its log say ``why``."""
        self.assertIn(why, seen.dialer_row["reason"])
        self.assertIn(why, seen.dialer_unreachable)
        self.assertIn(why, seen.dialer_log)

    # -- certificates from our CA naming the wrong cell ------------------------

    def test_wrong_cell(self) -> None:
        """Injected: a valid certificate from our CA naming 'elsewhere', a
        cell of the tree that is not a neighbour of api. Seen: api refuses
        it by name ("its certificate names ['elsewhere'], expected child
        child1 or child2"); the dialer is told api closed the link before
        accepting it and to check api's [[children]]."""
        seen = self.attempt(dialer="elsewhere")
        self.assert_listener_refused(
            seen,
            "elsewhere",
            "its certificate names ['elsewhere'], expected child child1 or child2",
        )
        self.assert_dialer_told(seen, "the parent closed the link before accepting it")
        self.assertIn("check that its [[children]] lists this cell", seen.dialer_row["reason"])

    def test_sibling_dials_in(self) -> None:
        """Injected: child2 (a sibling of child1, certificate from our CA)
        dials child1's listener, which accepts only its own child gc1.
        Seen: child1 refuses it by name; child2 is told it was not
        accepted."""
        seen = self.attempt(listener="child1", children=("gc1",), dialer="child2")
        self.assert_listener_refused(
            seen, "child2", "its certificate names ['child2'], expected child gc1"
        )
        self.assert_dialer_told(seen, "the parent closed the link before accepting it")

    def test_sibling_answers_for_the_parent(self) -> None:
        """Injected: child1 dials api's address but finds its sibling child2
        listening there (child2's own certificate from our CA). Seen: child1
        refuses it during the handshake, saying the certificate names child2
        and it dialed api."""
        seen = self.attempt(
            listener="api", listener_material=self.ca.material("child2"), dialer="child1"
        )
        self.assert_dialer_told(
            seen,
            "the peer's certificate does not name the cell we dialed: it names "
            "['child2'], we expected 'api'",
        )
        self.assertEqual(seen.listener_states["refused_unknown"], {})

    def test_parent_as_child(self) -> None:
        """Injected: api's own certificate used to dial into child1's
        listener as if api were a child of child1. Seen: child1 refuses it
        ("its certificate names ['api'], expected child gc1"): a parent is
        never accepted on the children's listener."""
        seen = self.attempt(
            listener="child1",
            children=("gc1",),
            dialer="child1",
            dialer_material=self.ca.material("api"),
        )
        self.assert_listener_refused(
            seen, "api", "its certificate names ['api'], expected child gc1"
        )
        self.assert_dialer_told(seen, "the parent closed the link before accepting it")

    # -- wildcards -------------------------------------------------------------

    def test_wildcard_child(self) -> None:
        """Injected: child certificates from our CA whose DNS names are '*',
        '*.cells', or 'child1' plus '*.cells'. Seen: each is refused by api,
        saying it carries a wildcard and a cell's certificate must name
        exactly one cell, even when it also names child1 exactly."""
        for names in (["*"], ["*.cells"], ["child1", "*.cells"]):
            material = self.ca.material(f"wild{len(names)}", dns_names=names)
            seen = self.attempt(dialer_material=material)
            wild = next(n for n in names if "*" in n)
            self.assert_listener_refused(
                seen,
                names[0],
                f"its certificate carries the wildcard DNS name {wild!r} (a cell's "
                "certificate must name exactly one cell), expected child child1 or child2",
            )
            self.assert_dialer_told(seen, "the parent closed the link before accepting it")

    def test_wildcard_parent(self) -> None:
        """Injected: the parent presents a certificate from our CA naming
        'api' and '*' (or '*' alone). Seen: the child refuses it during the
        handshake, saying it carries a wildcard; no traceback is logged (the
        name is checked by match_peer, not by service_identity's wildcard
        rules, which raise on '*')."""
        for names in (["api", "*"], ["*"]):
            seen = self.attempt(listener_material=self.ca.material("api", dns_names=names))
            self.assert_dialer_told(
                seen,
                "the peer's certificate carries the wildcard DNS name '*' (a cell's "
                "certificate must name exactly one cell); we dialed 'api'",
            )
            self.assertEqual(seen.listener_states["refused_unknown"], {})

    # -- certificates OpenSSL refuses --------------------------------------------

    def test_unrelated_self_signed(self) -> None:
        """Injected: a self-signed certificate naming child1 (no CA at all).
        Seen: api says it is self-signed, not issued by our CA; child1 is
        told api does not trust the CA of its certificate."""
        seen = self.attempt(dialer_material=self_signed("child1", trusting=self.ca))
        self.assert_listener_refused(
            seen, "child1", "the certificate of 'child1' is self-signed, not issued by our CA"
        )
        self.assert_dialer_told(seen, "the peer does not trust the CA of our certificate")

    def test_unrelated_parent(self) -> None:
        """Injected: the parent presents a self-signed certificate naming
        api. Seen: the child says it is self-signed, not issued by our CA."""
        seen = self.attempt(listener_material=self_signed("api", trusting=self.ca))
        self.assert_dialer_told(
            seen, "the certificate of 'api' is self-signed, not issued by our CA"
        )

    def test_other_ca(self) -> None:
        """Injected: child1's certificate issued by another CA (child1 itself
        trusts ours). Seen: api says it was not issued by our CA and names
        the issuer; child1 is told api does not trust its CA."""
        other = CA.make("another CA")
        material = TLSMaterial(
            ca=self.ca.certificate(), own=other.issue("child1").private_certificate()
        )
        seen = self.attempt(dialer_material=material)
        self.assert_listener_refused(
            seen,
            "child1",
            "the certificate of 'child1' was not issued by our CA (issuer: CN=another CA)",
        )
        self.assert_dialer_told(seen, "the peer does not trust the CA of our certificate")

    def test_expired_child(self) -> None:
        """Injected: child1's certificate expired yesterday. Seen: api says
        it expired and to issue a new one; child1 is told api says its
        certificate has expired."""
        seen = self.attempt(dialer_material=self.ca.material("child1", **expired()))
        self.assert_listener_refused(seen, "child1", "the certificate of 'child1' expired on")
        self.assertIn("cellsd pki issue", seen.listener_log)
        self.assert_dialer_told(seen, "the peer says our certificate has expired")

    def test_expired_parent(self) -> None:
        """Injected: api's certificate expired yesterday. Seen: child1 says
        api's certificate expired and to issue a new one."""
        seen = self.attempt(listener_material=self.ca.material("api", **expired()))
        self.assert_dialer_told(seen, "the certificate of 'api' expired on")
        self.assertIn("issue a new one (cellsd pki issue)", seen.dialer_row["reason"])
        self.assertIn("the peer says our certificate has expired", seen.listener_log)

    def test_not_yet_valid_child(self) -> None:
        """Injected: child1's certificate valid only from tomorrow (as a
        child whose clock runs a day ahead would issue it). Seen: api says
        it is not yet valid, when it becomes valid, what api's clock says,
        and to check the clocks of both cells; child1 is told its
        certificate was refused and, if not valid there yet, to check the
        clocks."""
        material = self.ca.material("child1", **not_yet_valid())
        valid_from = material.own.original.to_cryptography().not_valid_before_utc
        seen = self.attempt(dialer_material=material)
        self.assert_listener_refused(
            seen,
            "child1",
            f"the certificate of 'child1' is not yet valid (valid from "
            f"{valid_from:%Y-%m-%d %H:%M:%S} UTC; this cell's clock says ",
        )
        self.assertIn("check the clocks of both cells", seen.listener_log)
        self.assert_dialer_told(seen, "check the clocks of both cells")

    def test_not_yet_valid_parent(self) -> None:
        """Injected: api's certificate valid only from tomorrow. Seen:
        child1 says api's certificate is not yet valid and to check the
        clocks of both cells."""
        seen = self.attempt(listener_material=self.ca.material("api", **not_yet_valid()))
        self.assert_dialer_told(seen, "the certificate of 'api' is not yet valid")
        self.assert_dialer_told(seen, "check the clocks of both cells (is NTP running?)")

    def test_refused_names_are_bounded(self) -> None:
        """Injected: refused certificates presenting more distinct names than
        link_states keeps apart (names from unverified peers must not grow
        the registry, or the metrics labels, without bound). Seen: the
        first MAX_REFUSED_NAMES names are counted apart, the rest together
        under '(other names)'."""
        from cellsd.links import neighbours

        self.patch(neighbours, "MAX_REFUSED_NAMES", 2)
        reactor = MemoryReactorClock()
        accepting = NeighbourLinks(
            reactor,
            _Settings(_Cell("api"), _Cells(), children=(_Neighbour("child1"),)),
            self.ca.material("api"),
            FakeReceiver("api"),
        )
        factory = accepting.accept_factory()
        for name in ("a", "b", "c", "d"):
            proto = factory.buildProtocol(None)
            assert isinstance(proto, CellLinkProtocol)
            proto.presented = (name,)
            proto.refusal = f"refused {name}"
            accepting._link_lost(proto)
        states = accepting.link_states()
        self.assertEqual(states["refused_unknown"], {"a": 1, "b": 1, "(other names)": 2})
        self.assertEqual(states["last_refusals"]["(other names)"], "refused d")


class EagerChild(CellLinkProtocol):
    """A dialing end that sends a Deliver as soon as the connection is
    made, without waiting for the handshake or Hello."""

    early: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.early = self.deliver(header(), b"{}", 5)


class PlaintextClient(amp.AMP):
    """A client speaking AMP without TLS: Hello, then Deliver, at once."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.answers: list[Any] = []
        for box in (
            amp.AmpBox({b"_command": b"cellsd-hello", b"_ask": b"1"}),
            amp.AmpBox(
                {
                    b"_command": b"cellsd-deliver",
                    b"_ask": b"2",
                    b"header": header(),
                    b"body": b"{}",
                    b"body.n": b"1",
                }
            ),
        ):
            self.transport.write(box.serialize())  # type: ignore[union-attr]  # connected

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        self.answers.append(box)


class EagerPeerTests(SynchronousTestCase):
    """No AMP box from a peer is processed before its certificate has been
    accepted, even one sent before the handshake completed."""

    ca = CA.make()

    def eager(self, **kwargs: Any) -> LinkPair:
        kwargs.setdefault("parent_material", self.ca.material("api"))
        kwargs.setdefault("children", ("child1", "child2"))
        with capturedLogs():
            pair = connect_link(child_class=EagerChild, **kwargs)
            pair.flush()
        return pair

    def assert_nothing_processed(self, pair: LinkPair) -> None:
        """Neither end became a link, no receiver got a message, and the
        early Deliver failed with a typed error naming the parent (it was
        sent, so the dialer cannot know more)."""
        self.assertEqual(pair.ready, [])
        self.assertEqual(pair.parent_receiver.calls, [])
        self.assertEqual(pair.child_receiver.calls, [])
        assert isinstance(pair.child, EagerChild)
        failure = self.failureResultOf(pair.child.early, CellsError)
        self.assertEqual(failure.value.kwargs["cell_name"], "api")
        self.assertIsNotNone(pair.parent.refusal)

    def test_positive_control(self) -> None:
        """Injected: nothing (child1's own certificate). Seen: the Deliver
        sent before the handshake completed is answered once the link is
        up; the eager child is not refused for sending early."""
        pair = connect_link(
            parent_material=self.ca.material("api"),
            child_material=self.ca.material("child1"),
            child_class=EagerChild,
        )
        pair.flush()
        assert isinstance(pair.child, EagerChild)
        self.successResultOf(pair.child.early)
        self.assertEqual(len(pair.parent_receiver.calls), 1)

    def test_every_refused_certificate(self) -> None:
        """Injected, one connection each, with a Deliver sent at once: a
        wrong cell, api's certificate as a child, wildcards, a self-signed
        certificate, another CA, expired, not yet valid. Seen: for each,
        no box is processed, the parent records a refusal, and the early
        call fails with a typed error naming api."""
        other = CA.make("another CA")
        materials = {
            "wrong cell": self.ca.material("elsewhere"),
            "parent as child": self.ca.material("api"),
            "wildcard": self.ca.material("w", dns_names=["child1", "*"]),
            "self-signed": self_signed("child1", trusting=self.ca),
            "other CA": TLSMaterial(
                ca=self.ca.certificate(), own=other.issue("child1").private_certificate()
            ),
            "expired": self.ca.material("child1", **expired()),
            "not yet valid": self.ca.material("child1", **not_yet_valid()),
        }
        for kind, material in materials.items():
            with self.subTest(kind):
                self.assert_nothing_processed(self.eager(child_material=material))

    def test_no_client_certificate(self) -> None:
        """Injected: a client presenting no certificate at all, sending a
        Deliver at once. Seen: nothing processed; the parent says the peer
        presented no client certificate."""
        pair = self.eager(child_material=None)
        self.assert_nothing_processed(pair)
        self.assertIn("presented no client certificate", pair.parent.refusal or "")

    def test_plaintext_amp(self) -> None:
        """Injected: a client speaking AMP in plaintext (Hello and Deliver
        boxes, no TLS) to the TLS listener. Seen: the parent's TLS layer
        fails the connection ("TLS failed: ..."), no box is processed or
        answered."""
        receiver = FakeReceiver("api")
        built: list[CellLinkProtocol] = []

        def make() -> CellLinkProtocol:
            built.append(CellLinkProtocol(receiver, ["child1"], False, Clock(), cell_name="api"))
            return built[-1]

        tls = TLSMemoryBIOFactory(server_options(self.ca.material("api")), False, _Build(make))

        with capturedLogs() as events:
            client, _, pump = connectedServerAndClient(
                lambda: tls.buildProtocol(None), PlaintextClient
            )
            pump.flush()
        self.assertEqual(receiver.calls, [])
        self.assertEqual(client.answers, [])
        (proto,) = built
        self.assertFalse(proto.ready)
        self.assertIn("TLS failed", proto.refusal or "")
        self.assertIn("failed to set up: TLS failed", "\n".join(formatEvent(e) for e in events))
