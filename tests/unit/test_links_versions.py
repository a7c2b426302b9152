"""Inter-cell protocol versions (issue 7, item 4).

Two CellLinkProtocols over real TLS over iosim (tests.unit.links_pki). A
cell of the previous protocol version is simulated by
:class:`PreviousVersionLink`: its Hello is the command as it was before
negotiation (no ``versions`` argument or answer), so the current code meets
exactly the bytes an old peer sends.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from cellsd.context import RequestContext
from cellsd.errors import CellProtocolTooOld
from cellsd.links.amp import LinkClient, detached
from cellsd.links.protocol import CellLinkProtocol
from cellsd.messaging import versions
from cellsd.messaging.methods import install_cell_methods
from cellsd.messaging.routing import DOWN, UP
from cellsd.messaging.runner import MessageRunner
from cellsd.state import CellStateManager
from cellsd.testing import Neighbour
from tests.unit.links_pki import CA, LinkPair, connect_link, header


class PreviousHello(amp.Command):
    """Hello as cells spoke it before versions were negotiated."""

    commandName = b"cellsd-hello"
    arguments = []
    response = [(b"cell", amp.Unicode())]


class _PreviousClient(LinkClient):
    def hello(self, versions: Any = None) -> Any:
        return detached(self._proto.callRemote(PreviousHello))


class PreviousVersionLink(CellLinkProtocol):
    """A link end of a cell that speaks only protocol version 1."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, versions=None, **kwargs)
        self._client = _PreviousClient(self)

    @PreviousHello.responder
    def _previous_hello(self) -> dict[str, str]:
        return {"cell": self.cell_name}


class _OneLink:
    """INeighbourLinks with the one link of a LinkPair end."""

    def __init__(self, link: CellLinkProtocol) -> None:
        self.link = link

    def link_for(self, name: str, is_parent: bool) -> CellLinkProtocol | None:
        return self.link if self.link.neighbour == name else None


def _runner(name: str, neighbour: Neighbour, link: CellLinkProtocol, pair: LinkPair) -> Any:
    state = CellStateManager(name, [neighbour], pair.clock, capabilities={"name": [name]})
    runner = MessageRunner(state, _OneLink(link), pair.clock)  # type: ignore[arg-type]
    install_cell_methods(runner, None, None, None, None)
    link.receiver = runner
    return runner


class NegotiationTests(SynchronousTestCase):
    """Hello settles on the highest version both ends speak."""

    ca = CA.make()

    def connect(self, **kwargs: Any) -> LinkPair:
        return connect_link(
            parent_material=self.ca.material("api"),
            child_material=self.ca.material("child1"),
            **kwargs,
        )

    def test_current_both_ends(self) -> None:
        """Two current cells agree on the newest version, 2."""
        pair = self.connect()
        self.assertEqual((pair.child.protocol_version, pair.parent.protocol_version), (2, 2))

    def test_previous_child(self) -> None:
        """A child from before negotiation (no versions in its Hello) is
        linked at version 1, and a v1 message crosses both ways."""
        pair = self.connect(child_class=PreviousVersionLink)
        self.assertEqual(len(pair.ready), 2)
        self.assertEqual((pair.child.protocol_version, pair.parent.protocol_version), (1, 1))
        for link, far in ((pair.parent, "child1"), (pair.child, "api")):
            d = link.deliver(header(), b"{}", 5)
            pair.flush()
            self.assertEqual(orjson.loads(self.successResultOf(d))[0]["cell_name"], far)

    def test_previous_parent(self) -> None:
        """A parent from before negotiation answers Hello without versions
        (and ignores the dialer's): the link is up at version 1."""
        pair = self.connect(parent_class=PreviousVersionLink)
        self.assertEqual(len(pair.ready), 2)
        self.assertEqual((pair.child.protocol_version, pair.parent.protocol_version), (1, 1))

    def test_common_version(self) -> None:
        """The highest shared version; a peer stating none speaks 1."""
        self.assertEqual(versions.common_version((1, 2), None), 1)
        self.assertEqual(versions.common_version((1, 2), [1, 2, 3]), 2)
        self.assertEqual(versions.common_version((1, 2), [1]), 1)
        self.assertEqual(versions.common_version((2,), [3]), 1)


class MixedTreeTests(SynchronousTestCase):
    """A current api cell next to a child of the previous version, each a
    real MessageRunner, over one TLS link in memory."""

    ca = CA.make()

    def tree(self, child_class: type[CellLinkProtocol]) -> tuple[Any, Any, LinkPair]:
        pair = connect_link(
            parent_material=self.ca.material("api"),
            child_material=self.ca.material("child1"),
            child_class=child_class,
        )
        api = _runner("api", Neighbour("child1", False), pair.parent, pair)
        child = _runner("child1", Neighbour("api", True), pair.child, pair)
        return api, child, pair

    def ping(self, runner: Any, pair: LinkPair, target: str, direction: str = DOWN) -> Any:
        d = runner.send_targeted(
            RequestContext(is_admin=True), target, "ping", {}, direction, need_response=True
        )
        pair.flush()
        return self.successResultOf(d)

    def test_interoperate_on_v1(self) -> None:
        """v1 messages work both ways between current and previous cells."""
        api, child, pair = self.tree(PreviousVersionLink)
        down = self.ping(api, pair, "api!child1")
        self.assertFalse(down.failure)
        self.assertEqual(down.cell_name, "api!child1")
        up = self.ping(child, pair, "child1!api", UP)
        self.assertFalse(up.failure)

    def test_v2_message_refused_before_sending(self) -> None:
        """A message needing version 2 is refused at once on a version 1
        link, with a typed error naming both versions; the old cell never
        receives it. The same message crosses a current link."""
        self.patch(versions, "METHOD_VERSIONS", {"ping": 2})
        api, child, pair = self.tree(PreviousVersionLink)
        response = self.ping(api, pair, "api!child1")
        self.assertIsInstance(response.value, CellProtocolTooOld)
        self.assertEqual(
            str(response.value),
            "Cannot send ping to child1: it needs inter-cell protocol version 2, "
            "the link speaks version 1",
        )
        self.assertEqual(child.stats["received"], 0)

        api, child, pair = self.tree(CellLinkProtocol)
        self.assertFalse(self.ping(api, pair, "api!child1").failure)
        self.assertEqual(child.stats["received"], 1)
