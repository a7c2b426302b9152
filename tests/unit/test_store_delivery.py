"""The cell store's durable-delivery tables (outbox, received uuids,
pending builds), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from cellsd.errors import OutboxFull, PendingBuildsFull
from tests.unit.test_store_support import PostgresBackend, SQLiteBackend, StoreCase


class DeliveryTests(StoreCase):
    @inlineCallbacks
    def test_outbox_keeps_each_message_per_neighbour_until_confirmed(self) -> Any:
        s = self.store
        yield s.outbox_put("m-1", "instance_update_at_top", [("p1", b"h1", b"b1")], 10)
        yield s.outbox_put("m-2", "instance_destroy_at_top", [("p1", b"h2", b"b2")], 10)
        yield s.outbox_put("m-2", "instance_destroy_at_top", [("p1", b"h2", b"b2")], 10)
        pending = yield s.outbox_pending("p1")
        self.assertEqual(
            [(e.uuid, e.header, e.body) for e in pending],
            [
                ("m-1", b"h1", b"b1"),
                ("m-2", b"h2", b"b2"),
            ],
        )
        self.assertEqual((yield s.outbox_counts()), {"p1": 2})
        yield s.outbox_failed(pending[0].id, "link down")
        later = yield s.outbox_pending("p1", after_id=pending[0].id)
        self.assertEqual([e.uuid for e in later], ["m-2"])
        yield s.outbox_confirm(pending[0].id)
        rest = yield s.outbox_pending("p1")
        self.assertEqual([(e.uuid, e.attempts) for e in rest], [("m-2", 0)])

    @inlineCallbacks
    def test_a_full_outbox_refuses_and_names_the_limit(self) -> Any:
        s = self.store
        yield s.outbox_put("m-1", "bw_usage_update_at_top", [("p1", b"h", b"b")], 2)
        yield s.outbox_put("m-2", "bw_usage_update_at_top", [("p1", b"h", b"b")], 2)
        with self.assertRaises(OutboxFull) as caught:
            yield s.outbox_put("m-3", "bw_usage_update_at_top", [("p1", b"h", b"b")], 2, "c1")
        self.assertIn("limit 2", str(caught.exception))
        self.assertIn("bw_usage_update_at_top", str(caught.exception))
        self.assertEqual((yield s.outbox_counts()), {"p1": 2})

    @inlineCallbacks
    def test_a_received_message_is_queued_once(self) -> Any:
        s = self.store
        first = yield s.outbox_put("m-9", "x_at_top", [("p1", b"h", b"b")], 10, received=True)
        yield s.outbox_confirm((yield s.outbox_pending("p1"))[0].id)
        again = yield s.outbox_put("m-9", "x_at_top", [("p1", b"h", b"b")], 10, received=True)
        self.assertEqual((first, again), (True, False))
        self.assertEqual((yield s.outbox_pending("p1")), [])
        self.assertTrue((yield s.message_was_received("m-9")))

    @inlineCallbacks
    def test_a_full_outbox_does_not_record_the_uuid(self) -> Any:
        s = self.store
        with self.assertRaises(OutboxFull):
            yield s.outbox_put("m-1", "x_at_top", [("p1", b"h", b"b")], 0, received=True)
        self.assertFalse((yield s.message_was_received("m-1")))

    @inlineCallbacks
    def test_received_uuids_are_recorded_once_and_pruned(self) -> Any:
        s = self.store
        self.assertTrue((yield s.message_record_received("u-1", "instance_update_at_top")))
        self.assertFalse((yield s.message_record_received("u-1", "instance_update_at_top")))
        future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=60)
        self.assertEqual((yield s.messages_prune_received(future)), 1)
        self.assertFalse((yield s.message_was_received("u-1")))

    @inlineCallbacks
    def test_pending_builds_remember_their_route_until_done(self) -> Any:
        s = self.store
        yield s.build_put("b-1", '{"project_id": "p"}', '{"instances": []}')
        yield s.build_put("b-1", "{}", "{}")
        yield s.build_route("b-1", "api!child1")
        (build,) = yield s.builds_pending()
        self.assertEqual((build.id, build.route, build.attempts), ("b-1", "api!child1", 1))
        self.assertEqual(build.ctxt, '{"project_id": "p"}')
        yield s.build_done("b-1")
        self.assertEqual((yield s.builds_pending()), [])

    @inlineCallbacks
    def test_a_build_is_recorded_once_and_a_resend_after_done_is_recognised(self) -> Any:
        s = self.store
        self.assertTrue((yield s.build_put("b-1", "{}", "{}", 10)))
        self.assertFalse((yield s.build_put("b-1", "{}", "{}", 10)))
        yield s.build_done("b-1")
        yield s.build_done("b-1")
        self.assertFalse((yield s.build_put("b-1", "{}", "{}", 10)))
        self.assertEqual((yield s.builds_pending()), [])
        self.assertTrue((yield s.message_was_received("b-1")))

    @inlineCallbacks
    def test_pending_builds_are_bounded(self) -> Any:
        s = self.store
        yield s.build_put("b-1", "{}", "{}", 1, "top")
        with self.assertRaises(PendingBuildsFull) as caught:
            yield s.build_put("b-2", "{}", "{}", 1, "top")
        self.assertIn("limit 1", str(caught.exception))
        self.assertIn("b-2", str(caught.exception))
        self.assertEqual([b.id for b in (yield s.builds_pending())], ["b-1"])


class SQLiteDeliveryTests(SQLiteBackend, DeliveryTests, TestCase):
    pass


class PostgresDeliveryTests(PostgresBackend, DeliveryTests, TestCase):
    pass
