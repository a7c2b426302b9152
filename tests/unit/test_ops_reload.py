"""Reloading a running cell's configuration (cellsd.ops.reload).

The reloaded cell is a real one (``build_cell`` on its TOML file, with its
real NeighbourLinks); its neighbours are NeighbourLinks of their own. All
of them run on one MemoryReactorClock: connections are completed over real
TLS in memory (ConnectionCompleter), and time moves only when told.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import orjson
from cryptography import x509
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.test.iosim import ConnectionCompleter, IOPump
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cellsd.config import load_settings
from cellsd.config_write import render_config
from cellsd.errors import CellsError, CellStillOwnsInstances, ConfigError
from cellsd.links.health import JOINING_REASON, NeighbourHealth
from cellsd.links.neighbours import DISABLED_REASON, NeighbourLinks
from cellsd.links.protocol import CellLinkProtocol
from cellsd.ops.manhole import namespace_for
from cellsd.ops.reload import (
    Reloader,
    ReloadOnSignal,
    ReloadReport,
    diff_settings,
    reload_config,
)
from cellsd.scheduler.scheduler import CellsScheduler
from cellsd.service import Cell, CellService, build_cell
from tests.unit.cell_support import new_instance
from tests.unit.link_settings import CellName as _CellName
from tests.unit.link_settings import Cells
from tests.unit.link_settings import Neighbour as _Neighbour
from tests.unit.link_settings import Settings as _Settings
from tests.unit.links_pki import CA, FakeReceiver, header
from tests.unit.test_store_support import PostgresBackend, SQLiteBackend, StoreCase

PORT = 7101
API_PORT = 7102


# -- the neighbours' side: NeighbourLinks with the settings shape it reads ---


#: Children redial within a second here.
_Cells = functools.partial(Cells, reconnect_max_delay=1.0)


# -- config files -------------------------------------------------------------

Child = str | Mapping[str, Any]


def write_config(
    path: Path,
    tls_dir: Path,
    *,
    name: str = "api",
    children: Iterable[Child] = (),
    parents: Iterable[Mapping[str, Any]] = (),
    listen: str | None = f"tcp:{PORT}:interface=127.0.0.1",
    cells: Mapping[str, Any] | None = None,
    store: str | None = None,
) -> Path:
    data: dict[str, Any] = {
        "cell": {"name": name, "state_dir": str(path.parent / "var" / name)},
        "tls": {
            "ca": str(tls_dir / "ca.pem"),
            "cert": str(tls_dir / f"{name}.pem"),
            "key": str(tls_dir / f"{name}.key"),
        },
        "cells": {"listen": listen, "call_timeout": 5.0, **(cells or {})},
        "api": {"listen": f"tcp:{API_PORT}:interface=127.0.0.1", "call_timeout": 5.0},
        "store": {"url": store or f"sqlite:///{path.parent / (name + '.sqlite')}"},
        "parents": list(parents),
        "children": [{"name": c} if isinstance(c, str) else dict(c) for c in children],
    }
    path.write_text(render_config(data), encoding="utf-8")
    return path


class _FakeStore:
    """Answers instance_count_in_subtree from a table (the real query is
    tested below, on SQLite and PostgreSQL)."""

    def __init__(self, counts: Mapping[str, int]) -> None:
        self.counts = dict(counts)
        self.asked: list[str] = []

    def instance_count_in_subtree(self, path: str) -> Deferred[int]:
        self.asked.append(path)
        return defer.succeed(self.counts.get(path, 0))


class _Case(SynchronousTestCase):
    ca = CA.make()
    names = ("api", "c1", "c2", "c3")

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.completer = ConnectionCompleter(self.reactor)
        self.dir = Path(self.mktemp()).resolve()
        self.tls = self.dir / "pki"
        self.tls.mkdir(parents=True)
        for name in self.names:
            self.ca.write(self.tls, name)
        self.config = self.dir / "api.toml"

    def api(self, children: Iterable[Child] = ("c1",), **kw: Any) -> Cell:
        """The reloaded cell: api, listening for ``children``."""
        write_config(self.config, self.tls, children=children, **kw)
        cell = build_cell(load_settings(self.config), self.reactor)
        cell.store = None
        cell.links.startService()
        self.addCleanup(cell.links.stopService)
        return cell

    def child(self, name: str, ca: CA | None = None) -> NeighbourLinks:
        """A child cell dialing api (its certificate from ``ca``)."""
        settings = _Settings(
            cell=_CellName(name),
            cells=_Cells(),
            parents=(_Neighbour("api", f"tcp:127.0.0.1:{PORT}", True),),
        )
        links = NeighbourLinks(
            self.reactor,
            settings,
            (ca or self.ca).material(name),
            FakeReceiver(name),
            jitter=lambda: 0.0,
        )
        links.startService()
        self.addCleanup(links.stopService)
        return links

    def complete(self) -> IOPump:
        pump = self.completer.succeedOnce()
        assert pump is not None, "no connection to complete"
        pump.flush()
        return pump

    def reload(self, cell: Cell, force: bool = False) -> ReloadReport:
        return self.successResultOf(Deferred.fromCoroutine(reload_config(cell, force=force)))

    def refused(self, cell: Cell, force: bool = False) -> CellsError:
        failure = self.failureResultOf(
            Deferred.fromCoroutine(reload_config(cell, force=force)), CellsError
        )
        assert isinstance(failure.value, CellsError)
        return failure.value

    def health(self, cell: Cell, name: str) -> tuple[str, str]:
        state = cell.links.link_states()["children"][name]
        return state["state"], state["reason"]

    def only_link(self, cell: Cell, name: str) -> CellLinkProtocol:
        link = cell.links.link_for(name, False)
        assert isinstance(link, CellLinkProtocol)
        return link

    def api_listening_for_c1(self) -> NeighbourLinks:
        """api's links, listening for its one child c1."""
        parent = NeighbourLinks(
            self.reactor,
            _Settings(
                cell=_CellName("api"),
                cells=_Cells(listen=f"tcp:{PORT}:interface=127.0.0.1"),
                children=(_Neighbour("c1"),),
            ),
            self.ca.material("api"),
            FakeReceiver("api"),
        )
        parent.startService()
        self.addCleanup(parent.stopService)
        return parent

    def c1_from(self, config: Path, parents: list[dict[str, str]] | None = None) -> Cell:
        """Cell c1 (no store) built from a config written to ``config``,
        its links started."""
        write_config(config, self.tls, name="c1", listen=None, parents=parents or [])
        cell = build_cell(load_settings(config), self.reactor)
        cell.store = None
        cell.links.startService()
        self.addCleanup(cell.links.stopService)
        return cell


class AddTests(_Case):
    def test_child_added_joins_then_enabled(self) -> None:
        """Injected: the file gains [[children]] c2 and is reloaded while c1's
        link is up. Seen: the report names c2; c2 is "disabled: joining" and
        the scheduler skips it; c2's dial, refused before the reload, now
        comes up and enables it (scheduled from then on); c1's link is the
        same connection throughout."""
        cell = self.api(children=["c1"])
        self.child("c1")
        self.complete()
        before = self.only_link(cell, "c1")
        c2 = self.child("c2")
        self.complete()
        self.assertEqual(cell.links.link_states()["refused_unknown"], {"c2": 1})

        write_config(self.config, self.tls, children=["c1", "c2"])
        report = self.reload(cell)

        self.assertEqual(report.added, ["child c2"])
        self.assertEqual(report.removed, [])
        self.assertEqual(self.health(cell, "c2"), ("disabled", JOINING_REASON))
        scheduler = CellsScheduler(cell.runner)
        self.assertEqual([c.name for c in scheduler.candidates()], ["c1"])
        self.assertIsNone(cell.links.link_for("c2", False))

        self.reactor.advance(1.6)  # c2's backoff after the refusal
        self.complete()
        self.assertEqual(self.health(cell, "c2")[0], "up")
        self.assertEqual([c.name for c in scheduler.candidates()], ["c1", "c2"])
        self.assertTrue(c2.link_states()["parents"]["api"]["up"])
        self.assertIs(self.only_link(cell, "c1"), before)
        self.assertTrue(before.ready)
        self.assertEqual(cell.settings.children[1].name, "c2")

    def test_parent_added_is_dialed(self) -> None:
        """Injected: a cell with no parent gains [[parents]] api. Seen: it
        dials api at once, api is joining until the link is up, then up;
        its state now has a parent (it is no longer the top)."""
        parent = self.api_listening_for_c1()
        config = self.dir / "c1.toml"
        cell = self.c1_from(config)
        self.assertTrue(cell.state.is_top())
        self.assertEqual(self.reactor.tcpClients, [])

        endpoint = f"tcp:127.0.0.1:{PORT}"
        write_config(
            config,
            self.tls,
            name="c1",
            listen=None,
            parents=[{"name": "api", "endpoint": endpoint}],
        )
        report = self.reload(cell)

        self.assertEqual(report.added, ["parent api"])
        self.assertFalse(cell.state.is_top())
        state = cell.links.link_states()["parents"]["api"]
        self.assertEqual((state["state"], state["reason"]), ("disabled", JOINING_REASON))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.complete()
        self.assertEqual(cell.links.link_states()["parents"]["api"]["state"], "up")
        self.assertIsNotNone(cell.links.link_for("api", True))
        self.assertTrue(parent.link_states()["children"]["c1"]["up"])

    def test_added_disabled_stays_disabled(self) -> None:
        """A child added with ``enabled = false`` stays disabled (the
        operator's reason) once its link is up."""
        cell = self.api(children=["c1"])
        write_config(self.config, self.tls, children=["c1", {"name": "c2", "enabled": False}])
        self.reload(cell)
        self.child("c2")
        self.complete()
        self.assertEqual(self.health(cell, "c2"), ("disabled", DISABLED_REASON))
        self.assertTrue(cell.links.link_states()["children"]["c2"]["up"])


class RemoveTests(_Case):
    def test_child_owning_instances_refused(self) -> None:
        """Injected: c2 is removed from the file while the store has 3 live
        instances below it. Seen: CellStillOwnsInstances naming c2 and 3;
        nothing changed (c2 still in the state, its link up and enabled,
        the running settings as before)."""
        cell = self.api(children=["c1", "c2"])
        store = _FakeStore({"api!c2": 3})
        cell.store = cast(Any, store)
        self.child("c2")
        self.complete()
        link = self.only_link(cell, "c2")
        settings = cell.settings

        write_config(self.config, self.tls, children=["c1"])
        error = self.refused(cell)

        self.assertIsInstance(error, CellStillOwnsInstances)
        self.assertIn("c2", str(error))
        self.assertIn("3 live instances", str(error))
        self.assertEqual(store.asked, ["api!c2"])
        self.assertIsNotNone(cell.state.get_child_cell("c2"))
        self.assertIs(self.only_link(cell, "c2"), link)
        self.assertEqual(self.health(cell, "c2")[0], "up")
        self.assertIs(cell.settings, settings)

    def test_forced_removal(self) -> None:
        """Injected: the same removal, forced. Seen: c2 leaves the state and
        the link registry, its link is closed (c2 sees it drop and is
        refused when it redials), c1's link is untouched."""
        cell = self.api(children=["c1", "c2"])
        cell.store = cast(Any, _FakeStore({"api!c2": 3}))
        self.child("c1")
        self.complete()
        c1_link = self.only_link(cell, "c1")
        c2 = self.child("c2")
        pump = self.complete()

        write_config(self.config, self.tls, children=["c1"])
        report = self.reload(cell, force=True)
        pump.flush()

        self.assertEqual(report.removed, ["child c2"])
        self.assertEqual(report.links_closed, 1)
        self.assertIsNone(cell.state.get_child_cell("c2"))
        self.assertNotIn("c2", cell.links.link_states()["children"])
        self.assertFalse(c2.link_states()["parents"]["api"]["up"])
        self.assertIs(self.only_link(cell, "c1"), c1_link)
        self.assertTrue(c1_link.ready)
        self.assertEqual(self.health(cell, "c1")[0], "up")
        self.assertEqual([c.name for c in cell.settings.children], ["c1"])
        self.reactor.advance(1.1)  # c2 redials: refused, as an unknown name
        self.complete()
        self.assertEqual(cell.links.link_states()["refused_unknown"], {"c2": 1})
        self.assertNotIn("c2", cell.links.link_states()["children"])

    def test_removal_drains_calls_in_flight(self) -> None:
        """Injected: a call from api to c2 is in flight (c2 holds its answer)
        when c2 is removed. Seen: the reload waits; c2 is disabled at once
        (a new call fails as unreachable) but its link stays open; when c2
        answers, the call completes with its answer, and only then is the
        link closed (c2 sees it go)."""
        cell = self.api(children=["c1", "c2"])
        c2 = self.child("c2")
        pump = self.complete()
        receiver = cast(FakeReceiver, c2.receiver)
        receiver.hold = True
        call = self.only_link(cell, "c2").deliver(header(), b"{}", None)
        pump.flush()
        self.assertEqual(len(receiver.pending), 1)

        write_config(self.config, self.tls, children=["c1"])
        reloading = Deferred.fromCoroutine(reload_config(cell))
        self.reactor.advance(1)
        pump.flush()
        self.assertNoResult(reloading)
        self.assertIsNone(cell.links.link_for("c2", False))
        self.assertTrue(c2.link_states()["parents"]["api"]["up"])

        receiver.pending[0].callback(
            orjson.dumps([{"cell_name": "c2", "value": 1, "failure": False}])
        )
        pump.flush()
        self.assertEqual(orjson.loads(self.successResultOf(call))[0]["value"], 1)
        self.reactor.advance(0.1)
        pump.flush()
        report = self.successResultOf(reloading)
        self.assertEqual(report.links_closed, 1)
        self.assertFalse(c2.link_states()["parents"]["api"]["up"])

    def test_parent_removed(self) -> None:
        """Injected: c1's only [[parents]] entry is removed while its link is
        up. Seen: the link is closed (api sees c1 go), c1 never redials,
        and c1 is now the top of its own tree."""
        parent = self.api_listening_for_c1()
        config = self.dir / "c1.toml"
        endpoint = [{"name": "api", "endpoint": f"tcp:127.0.0.1:{PORT}"}]
        cell = self.c1_from(config, parents=endpoint)
        pump = self.complete()
        self.assertTrue(parent.link_states()["children"]["c1"]["up"])

        write_config(config, self.tls, name="c1", listen=None)
        reloading = Deferred.fromCoroutine(reload_config(cell))
        pump.flush()  # stopping the dialer waits for its connection to close
        report = self.successResultOf(reloading)

        self.assertEqual((report.removed, report.links_closed), (["parent api"], 1))
        self.assertFalse(parent.link_states()["children"]["c1"]["up"])
        self.assertTrue(cell.state.is_top())
        self.assertEqual(cell.links.link_states()["parents"], {})
        self.reactor.advance(60)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_removal_deadline(self) -> None:
        """Injected: c2 never answers the call in flight. Seen: the link is
        closed at the longest call deadline (5 s here) and the call fails
        with a CellsError instead of hanging."""
        cell = self.api(children=["c2"])
        c2 = self.child("c2")
        pump = self.complete()
        cast(FakeReceiver, c2.receiver).hold = True
        call = self.only_link(cell, "c2").deliver(header(), b"{}", None)
        pump.flush()

        write_config(self.config, self.tls, children=[])
        reloading = Deferred.fromCoroutine(reload_config(cell))
        self.reactor.advance(4.9)
        self.assertNoResult(reloading)
        self.reactor.advance(0.2)
        pump.flush()
        self.assertEqual(self.successResultOf(reloading).links_closed, 1)
        self.failureResultOf(call, CellsError)


class ToggleTests(_Case):
    def test_disable_then_enable(self) -> None:
        """Injected: ``enabled = false`` on c1, reloaded, then removed again.
        Seen: c1 is disabled (calls refused, not scheduled) with the
        operator's reason, then up again; the link object and its
        connection are the same throughout (not reconnected)."""
        cell = self.api(children=["c1"])
        c1 = self.child("c1")
        self.complete()
        link = self.only_link(cell, "c1")
        scheduler = CellsScheduler(cell.runner)

        write_config(self.config, self.tls, children=[{"name": "c1", "enabled": False}])
        report = self.reload(cell)
        self.assertEqual(report.disabled, ["child c1"])
        self.assertEqual(self.health(cell, "c1"), ("disabled", DISABLED_REASON))
        self.assertIsNone(cell.links.link_for("c1", False))
        self.assertEqual(scheduler.candidates(), [])
        self.assertTrue(link.ready)

        write_config(self.config, self.tls, children=["c1"])
        report = self.reload(cell)
        self.assertEqual(report.enabled, ["child c1"])
        self.assertEqual(self.health(cell, "c1")[0], "up")
        self.assertIs(self.only_link(cell, "c1"), link)
        self.assertEqual([c.name for c in scheduler.candidates()], ["c1"])
        self.assertEqual(c1.link_states()["parents"]["api"]["reconnects"], 0)
        self.assertEqual(cell.links.link_states()["children"]["c1"]["reconnects"], 0)

    def test_weights(self) -> None:
        """New weights reach the state at once."""
        cell = self.api(children=["c1"])
        write_config(self.config, self.tls, children=[{"name": "c1", "weight_offset": 5.0}])
        report = self.reload(cell)
        self.assertEqual(report.reweighted, ["child c1"])
        child = cell.state.get_child_cell("c1")
        assert child is not None
        self.assertEqual(child.weight_offset, 5.0)

    def test_disabled_at_start(self) -> None:
        """A cell started with ``enabled = false`` on a child has it
        disabled from the start."""
        cell = self.api(children=[{"name": "c1", "enabled": False}])
        self.assertEqual(self.health(cell, "c1"), ("disabled", DISABLED_REASON))


class TLSTests(_Case):
    def rotate(self, ca: CA, names: Sequence[str] = ("api", "c3")) -> Path:
        """Write a new PKI directory with ``ca``'s certificates."""
        new = self.dir / "pki2"
        new.mkdir(exist_ok=True)
        for name in names:
            ca.write(new, name)
        return new

    def test_rotate_certificate_and_ca(self) -> None:
        """Injected: api's [tls] is pointed at a new CA and a certificate
        from it, while c1 (old CA) has a link up and a call in flight.
        Seen: the report names tls.ca and tls.cert; c1's link is the same
        connection and the call completes over it; a new child with a
        certificate from the new CA is accepted and sees api's new
        certificate; c1, redialing with its old-CA certificate, is refused."""
        cell = self.api(children=["c1", "c3"])
        c1 = self.child("c1")
        pump = self.complete()
        link = self.only_link(cell, "c1")
        receiver = cast(FakeReceiver, c1.receiver)
        receiver.hold = True
        call = link.deliver(header(), b"{}", 5)
        pump.flush()

        new_ca = CA.make("cellsd test CA 2")
        write_config(self.config, self.rotate(new_ca), children=["c1", "c3"])
        report = self.reload(cell)

        self.assertEqual(report.tls, ["tls.ca", "tls.cert"])  # the key is the same one
        receiver.pending[0].callback(
            orjson.dumps([{"cell_name": "c1", "value": 7, "failure": False}])
        )
        pump.flush()
        self.assertEqual(orjson.loads(self.successResultOf(call))[0]["value"], 7)
        self.assertIs(self.only_link(cell, "c1"), link)
        self.assertTrue(link.ready)

        c3 = self.child("c3", ca=new_ca)
        self.complete()
        up = c3.link_for("api", True)
        assert isinstance(up, CellLinkProtocol)
        seen = up.transport.getPeerCertificate().to_cryptography()
        issued = x509.load_pem_x509_certificate((self.dir / "pki2" / "api.pem").read_bytes())
        self.assertEqual(seen.serial_number, issued.serial_number)

        pump.clientIO.loseConnection()
        pump.flush()
        self.reactor.advance(1.6)
        self.complete()
        self.assertEqual(c1.link_states()["parents"]["api"]["refused"], 1)
        self.assertFalse(c1.link_states()["parents"]["api"]["up"])

    def test_new_dial_presents_new_certificate(self) -> None:
        """Injected: c1 (dialing api) gets a re-issued certificate by a
        reload, then its link drops. Seen: the link stays up until the
        drop; the redial presents the new certificate (api sees its
        serial)."""
        parent = self.api_listening_for_c1()
        config = self.dir / "c1.toml"
        endpoint = [{"name": "api", "endpoint": f"tcp:127.0.0.1:{PORT}"}]
        cell = self.c1_from(config, parents=endpoint)
        pump = self.complete()
        first = parent.link_for("c1", False)
        assert isinstance(first, CellLinkProtocol)

        write_config(config, self.rotate(self.ca, ["c1"]), name="c1", listen=None, parents=endpoint)
        report = self.reload(cell)
        self.assertEqual(report.tls, ["tls.cert"])
        self.assertIs(parent.link_for("c1", False), first)
        self.assertTrue(first.ready)

        pump.clientIO.loseConnection()
        pump.flush()
        self.reactor.advance(3)  # the backoff, with up to 1 s of jitter
        self.complete()
        second = parent.link_for("c1", False)
        assert isinstance(second, CellLinkProtocol) and second is not first
        seen = second.transport.getPeerCertificate().to_cryptography()
        issued = x509.load_pem_x509_certificate((self.dir / "pki2" / "c1.pem").read_bytes())
        self.assertEqual(seen.serial_number, issued.serial_number)

    def test_key_not_matching_refused(self) -> None:
        """Injected: a new certificate whose key file holds another cell's
        key. Seen: ConfigError naming tls.key; the TLS material and the
        settings in use are unchanged."""
        cell = self.api(children=["c1"])
        material = cell.links.tls.material
        new = self.rotate(self.ca, ["api", "c2"])
        (new / "api.key").write_bytes((new / "c2.key").read_bytes())
        write_config(self.config, new, children=["c1", "c2"])
        error = self.refused(cell)
        self.assertIsInstance(error, ConfigError)
        self.assertEqual(error.kwargs["key"], "tls.key")
        self.assertIs(cell.links.tls.material, material)
        self.assertIsNone(cell.state.get_child_cell("c2"))

    def test_certificate_of_another_cell_refused(self) -> None:
        """A certificate that does not name this cell is refused (tls.cert)."""
        cell = self.api()
        config = self.config.read_text()
        self.config.write_text(config.replace("api.pem", "c1.pem").replace("api.key", "c1.key"))
        error = self.refused(cell)
        self.assertEqual(error.kwargs["key"], "tls.cert")
        self.assertIn("not this cell", str(error))


class RefusedTests(_Case):
    def test_broken_file_refused(self) -> None:
        """Injected: a child name that is not a DNS label, then a file that
        is not TOML. Seen: ConfigError naming children[1].name, then the
        file; the state, links and settings are unchanged."""
        cell = self.api(children=["c1"])
        settings = cell.settings
        write_config(self.config, self.tls, children=["c1", "bad_name"])
        error = self.refused(cell)
        self.assertEqual(error.kwargs["key"], "children[1].name")
        self.config.write_text("[cell\nname = 'api'\n")
        error = self.refused(cell)
        self.assertIn("not valid TOML", str(error))
        self.assertIs(cell.settings, settings)
        self.assertEqual([c.name for c in cell.state.get_child_cells()], ["c1"])
        self.assertEqual(list(cell.links.link_states()["children"]), ["c1"])

    def test_needs_restart(self) -> None:
        """Injected: new [cells] listen, store URL and call timeout next to
        a new child. Seen: the child is added; the other keys are reported
        as needing a restart and keep their running values."""
        cell = self.api(children=["c1"])
        write_config(
            self.config,
            self.tls,
            children=["c1", "c2"],
            listen="tcp:7199:interface=127.0.0.1",
            cells={"call_timeout": 9.0},
            store="sqlite:////tmp/elsewhere.sqlite",
        )
        report = self.reload(cell)
        self.assertEqual(report.added, ["child c2"])
        self.assertEqual(
            sorted(report.needs_restart), ["cells.call_timeout", "cells.listen", "store.url"]
        )
        self.assertEqual(cell.settings.cells.call_timeout, 5.0)
        self.assertIn("needs a restart to change: ", report.summary())

    def test_nothing_changed(self) -> None:
        """Reloading the same file changes nothing and says so."""
        cell = self.api(children=["c1"])
        report = self.reload(cell)
        self.assertFalse(report.changed)
        self.assertEqual(report.summary(), "no change applied")


class DiffTests(SynchronousTestCase):
    def test_parent_endpoint_needs_restart(self) -> None:
        """A parent's new endpoint is reported, and the running one kept."""
        base = Path(self.mktemp()).resolve()
        tls = base / "pki"
        tls.mkdir(parents=True)
        CA.make().write(tls, "c1")
        config = base / "c1.toml"
        write_config(config, tls, name="c1", parents=[{"name": "api", "endpoint": "tcp:h:1"}])
        old = load_settings(config)
        write_config(config, tls, name="c1", parents=[{"name": "api", "endpoint": "tcp:h:2"}])
        diff = diff_settings(old, load_settings(config))
        self.assertEqual(diff.needs_restart, ("parents[api].endpoint",))
        self.assertEqual(diff.applied.parents[0].endpoint, "tcp:h:1")
        self.assertEqual((diff.added, diff.removed), ((), ()))


class HealthJoinTests(SynchronousTestCase):
    def test_join_gate(self) -> None:
        """Joining is disabled until the first link is up, then up at once;
        the operator's disable wins over it."""
        from twisted.internet.task import Clock

        health = NeighbourHealth(Clock())
        health.join()
        self.assertEqual(health.evaluate()[1], JOINING_REASON)
        self.assertFalse(health.usable())
        health.link_up()
        self.assertEqual(health.state().value, "up")
        self.assertFalse(health.joining)


class _FakeReactor:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.calls.append((f, args))


class SignalTests(_Case):
    def test_sighup_reloads(self) -> None:
        """Injected: SIGHUP to this process with a new child in the file.
        Seen: the handler only schedules the reload on the reactor; run,
        it adds the child and logs the summary; stopping the service puts
        the previous handler back."""
        cell = self.api(children=["c1"])
        previous = signal.getsignal(signal.SIGHUP)
        reactor = _FakeReactor()
        hup = ReloadOnSignal(Reloader(cell), reactor)
        hup.startService()

        def stop() -> None:
            if hup.running:
                hup.stopService()

        self.addCleanup(stop)
        write_config(self.config, self.tls, children=["c1", "c2"])
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(len(reactor.calls), 1)
        self.assertIsNone(cell.state.get_child_cell("c2"))
        with capturedLogs() as events:
            f, args = reactor.calls[0]
            report = self.successResultOf(f(*args))
        assert report is not None
        self.assertEqual(report.added, ["child c2"])
        self.assertTrue(any("reloaded" in e.get("log_format", "") for e in events))
        hup.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

    def test_refused_reload_is_logged_not_raised(self) -> None:
        """A reload refused on SIGHUP is logged with the key; the handler's
        Deferred succeeds (the daemon carries on)."""
        cell = self.api(children=["c1"])
        hup = ReloadOnSignal(Reloader(cell), _FakeReactor())
        self.config.write_text("not toml [")
        with capturedLogs() as events:
            self.assertIsNone(self.successResultOf(hup.reload_now()))
        errors = [e for e in events if e.get("error")]
        self.assertEqual(len(errors), 1)
        self.assertIn("not valid TOML", errors[0]["error"])
        self.assertIn("nothing changed", errors[0]["log_format"])

    def test_reloads_run_one_at_a_time(self) -> None:
        """A second reload waits for the first (here: one draining a
        removed child's call in flight)."""
        cell = self.api(children=["c1", "c2"])
        c2 = self.child("c2")
        pump = self.complete()
        cast(FakeReceiver, c2.receiver).hold = True
        self.only_link(cell, "c2").deliver(header(), b"{}", None)
        pump.flush()
        reloader = Reloader(cell)
        write_config(self.config, self.tls, children=["c1"])
        first = reloader.reload()
        write_config(self.config, self.tls, children=["c1", "c3"])
        second = reloader.reload()
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertIsNone(cell.state.get_child_cell("c3"))
        self.reactor.advance(5.1)
        pump.flush()
        self.assertEqual(self.successResultOf(first).removed, ["child c2"])
        self.assertEqual(self.successResultOf(second).added, ["child c3"])


class ManholeTests(_Case):
    def test_reload_in_namespace(self) -> None:
        """The manhole's ``reload`` is the cell service's reloader."""
        cell = self.api(children=["c1"])
        top = CellService(cell)
        namespace = namespace_for(top)
        write_config(self.config, self.tls, children=["c1", "c2"])
        report = self.successResultOf(namespace["reload"]())
        self.assertEqual(report.added, ["child c2"])
        write_config(self.config, self.tls, children=["c2"])
        self.assertEqual(
            self.successResultOf(namespace["reload"](force=True)).removed, ["child c1"]
        )


# -- the store's count of a subtree's instances ---------------------------------


class SubtreeCountTests(StoreCase):
    async def _count(self) -> None:
        for cell_name in ("api!c2", "api!c2!g1", "api!c2!g1", "api!c20", "api!c1", "api"):
            await self.store.instance_create(new_instance(cell_name=cell_name))
        gone = await self.store.instance_create(new_instance(cell_name="api!c2"))
        await self.store.instance_destroy(str(gone.uuid))
        self.assertEqual(await self.store.instance_count_in_subtree("api!c2"), 3)
        self.assertEqual(await self.store.instance_count_in_subtree("api!c2!g1"), 2)
        self.assertEqual(await self.store.instance_count_in_subtree("c2!g1"), 2)
        self.assertEqual(await self.store.instance_count_in_subtree("api!c3"), 0)

    def test_count(self) -> Deferred[None]:
        """Live instances at or below a path (deleted ones and a cell whose
        name merely starts the same, api!c20, left out)."""
        return Deferred.fromCoroutine(self._count())


class SQLiteSubtreeCountTests(SQLiteBackend, SubtreeCountTests, TestCase):
    pass


class PostgresSubtreeCountTests(PostgresBackend, SubtreeCountTests, TestCase):
    pass
