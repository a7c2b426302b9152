"""The cell store's instance actions and events, console auth tokens, cells
table and leases, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from cellsd.errors import (
    CellExists,
    CellNotFound,
    InstanceActionEventNotFound,
    InstanceActionNotFound,
)
from cellsd.objects import Cell, InstanceAction, InstanceActionEvent
from tests.unit.test_store_support import PostgresBackend, SQLiteBackend, StoreCase


class ActionAndCellTests(StoreCase):
    # -- instance actions -------------------------------------------------------------

    @inlineCallbacks
    def test_actions(self) -> Any:
        """Actions are listed newest first, found by request id (None when
        missing), and finished with a finish time and message."""
        first = yield self.store.action_start(
            InstanceAction(
                action="create",
                instance_uuid="i-1",
                request_id="req-1",
                user_id="u",
                project_id="p",
            )
        )
        self.assertIsNotNone(first.start_time)
        second = yield self.store.action_start(
            InstanceAction(action="reboot", instance_uuid="i-1", request_id="req-2")
        )
        yield self.store.action_start(
            InstanceAction(action="create", instance_uuid="i-2", request_id="req-3")
        )
        listed = yield self.store.actions_get("i-1")
        self.assertEqual([a.id for a in listed], [second.id, first.id])
        found = yield self.store.action_get_by_request_id("i-1", "req-1")
        self.assertEqual(found, first)
        missing = yield self.store.action_get_by_request_id("i-1", "req-3")
        self.assertIsNone(missing)
        finished = yield self.store.action_finish("i-1", "req-2", message="Error")
        self.assertIsNotNone(finished.finish_time)
        self.assertEqual(finished.message, "Error")
        with self.assertRaises(InstanceActionNotFound):
            yield self.store.action_finish("i-1", "req-404")

    @inlineCallbacks
    def test_action_events(self) -> Any:
        """Events of an action start, finish with a result and traceback, and
        list newest first; finishing an unknown event fails."""
        action = yield self.store.action_start(
            InstanceAction(action="reboot", instance_uuid="i-1", request_id="req-1")
        )
        one = yield self.store.action_event_start(
            InstanceActionEvent(event="compute_reboot_instance", action_id=action.id, host="h1")
        )
        two = yield self.store.action_event_start(
            InstanceActionEvent(event="compute_power_on", action_id=action.id, host="h1")
        )
        done = yield self.store.action_event_finish(
            action.id, "compute_reboot_instance", "Error", traceback="Traceback..."
        )
        self.assertEqual((done.id, done.result, done.traceback), (one.id, "Error", "Traceback..."))
        self.assertIsNotNone(done.finish_time)
        listed = yield self.store.action_events_get(action.id)
        self.assertEqual([e.id for e in listed], [two.id, one.id])
        with self.assertRaises(InstanceActionEventNotFound):
            yield self.store.action_event_finish(action.id, "nope", "Success")

    # -- console auth tokens -------------------------------------------------------------

    @inlineCallbacks
    def test_console_tokens(self) -> Any:
        """A token authorises its console until it expires or its instance's
        tokens are deleted; only the instance's tokens go."""
        token = yield self.store.console_auth_token_create("i-1", "novnc", "h1", 5900, ttl=600)
        other = yield self.store.console_auth_token_create(
            "i-2", "spice-html5", "h2", 5901, ttl=600, token="given"
        )
        self.assertEqual(other, "given")
        details = yield self.store.console_auth_token_validate(token)
        self.assertEqual(
            {k: details[k] for k in ("instance_uuid", "console_type", "host", "port")},
            {"instance_uuid": "i-1", "console_type": "novnc", "host": "h1", "port": 5900},
        )
        bad = yield self.store.console_auth_token_validate("forged")
        self.assertIsNone(bad)
        count = yield self.store.console_auth_token_delete_all_for_instance("i-1")
        self.assertEqual(count, 1)
        gone = yield self.store.console_auth_token_validate(token)
        self.assertIsNone(gone)
        still = yield self.store.console_auth_token_validate("given")
        self.assertIsNotNone(still)
        expired = yield self.store.console_auth_token_create("i-3", "novnc", "h", 1, ttl=-1)
        self.assertIsNone((yield self.store.console_auth_token_validate(expired)))
        removed = yield self.store.console_auth_token_delete_expired()
        self.assertEqual(removed, 1)

    # -- cells table ---------------------------------------------------------------------

    @inlineCallbacks
    def test_cells_crud(self) -> Any:
        """Create, get, list, update and soft-delete cell records; a name is
        unique while live (CellExists) and reusable after a delete."""
        made = yield self.store.cell_create(
            {"name": "child", "transport_url": "amp://c:7102", "is_parent": False}
        )
        self.assertEqual((made.weight_offset, made.weight_scale), (0.0, 1.0))
        yield self.store.cell_create(Cell(name="api", transport_url="amp://a", is_parent=True))
        with self.assertRaises(CellExists):
            yield self.store.cell_create({"name": "child", "transport_url": "amp://x"})
        got = yield self.store.cell_get("child")
        self.assertEqual(got, made)
        listed = yield self.store.cell_get_all()
        self.assertEqual([(c.name, c.is_parent) for c in listed], [("api", True), ("child", False)])
        updated = yield self.store.cell_update("child", {"weight_offset": 2.5})
        self.assertEqual(updated.weight_offset, 2.5)
        count = yield self.store.cell_delete("child")
        self.assertEqual(count, 1)
        count = yield self.store.cell_delete("child")
        self.assertEqual(count, 0)
        with self.assertRaises(CellNotFound):
            yield self.store.cell_get("child")
        with self.assertRaises(CellNotFound):
            yield self.store.cell_update("child", {"weight_offset": 1.0})
        again = yield self.store.cell_create({"name": "child", "transport_url": "amp://c2"})
        self.assertNotEqual(again.id, made.id)

    # -- leases ------------------------------------------------------------------------------

    @inlineCallbacks
    def test_leases(self) -> Any:
        """One holder at a time: a free lease is taken, renewed by its holder,
        refused to others until it expires or is released."""
        self.assertTrue((yield self.store.try_lease("heal", "worker-a", 60)))
        self.assertTrue((yield self.store.try_lease("heal", "worker-a", 60)))
        self.assertFalse((yield self.store.try_lease("heal", "worker-b", 60)))
        self.assertTrue((yield self.store.try_lease("other", "worker-b", 60)))
        self.assertFalse((yield self.store.release_lease("heal", "worker-b")))
        self.assertTrue((yield self.store.release_lease("heal", "worker-a")))
        self.assertTrue((yield self.store.try_lease("heal", "worker-b", 0)))
        # worker-b's lease has expired at once: worker-a takes over.
        self.assertTrue((yield self.store.try_lease("heal", "worker-a", 60)))
        self.assertFalse((yield self.store.try_lease("heal", "worker-b", 60)))

    @inlineCallbacks
    def test_lease_between_two_stores(self) -> Any:
        """Two stores on one database (two workers) see each other's leases."""
        other = self.make_store(self.store.url.render_as_string(hide_password=False))
        yield other.start()
        self.assertTrue((yield self.store.try_lease("sync", "a", 60)))
        self.assertFalse((yield other.try_lease("sync", "b", 60)))


class SQLiteActionAndCellTests(SQLiteBackend, ActionAndCellTests, TestCase):
    pass


class PostgresActionAndCellTests(PostgresBackend, ActionAndCellTests, TestCase):
    pass
