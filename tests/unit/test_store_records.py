"""The cell store's block device mappings, bandwidth usage and key pairs,
on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from cellsd.errors import BlockDeviceMappingNotFound, KeyPairExists, KeypairNotFound
from cellsd.objects import BlockDeviceMapping, KeyPair
from tests.unit.test_store_support import PostgresBackend, SQLiteBackend, StoreCase

UTC = datetime.UTC
PERIOD = datetime.datetime(2024, 5, 1, tzinfo=UTC)


def volume(**kw: Any) -> BlockDeviceMapping:
    values: dict[str, Any] = {
        "instance_uuid": "i-1",
        "source_type": "volume",
        "destination_type": "volume",
        "device_name": "/dev/vdb",
        "volume_id": "vol-1",
    }
    values.update(kw)
    return BlockDeviceMapping(**values)


def swap(**kw: Any) -> BlockDeviceMapping:
    return BlockDeviceMapping(
        instance_uuid="i-1",
        source_type="blank",
        destination_type="local",
        guest_format="swap",
        **kw,
    )


class RecordTests(StoreCase):
    # -- block device mappings -------------------------------------------------------

    @inlineCallbacks
    def test_bdm_create(self) -> Any:
        """A new mapping gets a uuid (unless it has one) and a local id; the
        sender's id is ignored; a plain dict works too."""
        made = yield self.store.bdm_create(volume(id=99))
        self.assertTrue(made.uuid)
        self.assertNotEqual(made.id, 99)
        self.assertEqual(made.volume_id, "vol-1")
        given = yield self.store.bdm_create(
            {"uuid": "bdm-x", "instance_uuid": "i-1", "device_name": "/dev/vdc", "id": 5}
        )
        self.assertEqual(given.uuid, "bdm-x")
        got = yield self.store.bdm_get_by_uuid("bdm-x")
        self.assertEqual(got, given)
        with self.assertRaises(BlockDeviceMappingNotFound):
            yield self.store.bdm_get_by_uuid("nope")

    @inlineCallbacks
    def test_bdm_update_or_create_by_uuid(self) -> Any:
        """The uuid is the natural key: the same uuid updates the row, a new
        one creates a row."""
        made = yield self.store.bdm_update_or_create(volume(uuid="b-1"))
        updated = yield self.store.bdm_update_or_create(
            volume(uuid="b-1", connection_info='{"driver": "iscsi"}', id=1234)
        )
        self.assertEqual(updated.id, made.id)
        self.assertEqual(updated.connection_info, '{"driver": "iscsi"}')
        other = yield self.store.bdm_update_or_create(volume(uuid="b-2", device_name="/dev/vdc"))
        self.assertNotEqual(other.id, made.id)
        found = yield self.store.bdm_get_all_by_instance("i-1")
        self.assertEqual([b.uuid for b in found], ["b-1", "b-2"])

    @inlineCallbacks
    def test_bdm_update_or_create_without_uuid(self) -> Any:
        """A mapping from an older cell, without uuid, updates the live
        mapping with the same instance and device name, or is created."""
        made = yield self.store.bdm_create(volume())
        updated = yield self.store.bdm_update_or_create(
            {"instance_uuid": "i-1", "device_name": "/dev/vdb", "volume_size": 10}
        )
        self.assertEqual((updated.uuid, updated.volume_size), (made.uuid, 10))
        fresh = yield self.store.bdm_update_or_create(
            {"instance_uuid": "i-1", "device_name": "/dev/vdz"}
        )
        self.assertNotEqual(fresh.uuid, made.uuid)

    @inlineCallbacks
    def test_a_new_swap_replaces_the_old(self) -> Any:
        """Creating a swap mapping soft-deletes the instance's other swaps."""
        yield self.store.bdm_create(swap(device_name="/dev/vdc"))
        yield self.store.bdm_create(volume())
        new_swap = yield self.store.bdm_update_or_create(swap(device_name="/dev/vdd"))
        found = yield self.store.bdm_get_all_by_instance("i-1")
        self.assertEqual(sorted(b.device_name for b in found), ["/dev/vdb", new_swap.device_name])

    @inlineCallbacks
    def test_bdm_destroy(self) -> Any:
        """Destroy by device name, else by volume id, soft-deletes the live
        matches of that instance only; with neither nothing happens."""
        yield self.store.bdm_create(volume())
        yield self.store.bdm_create(volume(device_name="/dev/vdc", volume_id="vol-2"))
        yield self.store.bdm_create(volume(instance_uuid="i-2"))
        count = yield self.store.bdm_destroy("i-1")
        self.assertEqual(count, 0)
        count = yield self.store.bdm_destroy("i-1", device_name="/dev/vdb")
        self.assertEqual(count, 1)
        count = yield self.store.bdm_destroy("i-1", volume_id="vol-2")
        self.assertEqual(count, 1)
        count = yield self.store.bdm_destroy("i-1", volume_id="vol-2")
        self.assertEqual(count, 0)
        left = yield self.store.bdm_get_all_by_instance("i-1")
        self.assertEqual(left, [])
        other = yield self.store.bdm_get_all_by_instance("i-2")
        self.assertEqual(len(other), 1)
        count = yield self.store.bdm_destroy_by_uuid(other[0].uuid)
        self.assertEqual(count, 1)

    @inlineCallbacks
    def test_bdms_in_boot_order(self) -> Any:
        """An instance's mappings list by boot index, unbootable ones last."""
        yield self.store.bdm_create(volume(uuid="c", boot_index=None))
        yield self.store.bdm_create(volume(uuid="b", boot_index=1))
        yield self.store.bdm_create(volume(uuid="a", boot_index=0))
        found = yield self.store.bdm_get_all_by_instance("i-1")
        self.assertEqual([b.uuid for b in found], ["a", "b", "c"])

    # -- bandwidth usage -------------------------------------------------------------

    @inlineCallbacks
    def test_bw_usage_upsert(self) -> Any:
        """The row keyed by (uuid, mac, start_period) is created once and
        updated after; last_refreshed defaults to now; periods may be ISO."""
        first = yield self.store.bw_usage_update("i-1", "aa:bb", PERIOD, 1, 2, 3, 4)
        self.assertEqual((first.bw_in, first.bw_out), (1, 2))
        self.assertIsNotNone(first.last_refreshed)
        second = yield self.store.bw_usage_update(
            "i-1", "aa:bb", PERIOD.isoformat(), 10, 20, 30, 40, last_refreshed=PERIOD
        )
        self.assertEqual(second.id, first.id)
        self.assertEqual((second.bw_in, second.last_ctr_out), (10, 40))
        self.assertEqual(second.last_refreshed, PERIOD)
        yield self.store.bw_usage_update("i-1", "cc:dd", PERIOD, 5, 5, 5, 5)
        yield self.store.bw_usage_update("i-1", "aa:bb", PERIOD.replace(month=6), 7, 7, 7, 7)
        found = yield self.store.bw_usage_get_by_uuids(["i-1"], PERIOD)
        self.assertEqual([(u.mac, u.bw_in) for u in found], [("aa:bb", 10), ("cc:dd", 5)])
        self.assertEqual(found[0].instance_uuid, "i-1")
        self.assertEqual(found[0].start_period, PERIOD)

    # -- key pairs ------------------------------------------------------------------------

    @inlineCallbacks
    def test_key_pairs(self) -> Any:
        """Create, get, list and destroy a user's key pair; a name is unique
        per user while live and reusable after a destroy."""
        made = yield self.store.key_pair_create(
            KeyPair(name="k1", user_id="u", fingerprint="fp", public_key="ssh-rsa AAA")
        )
        self.assertEqual(made.type, "ssh")
        got = yield self.store.key_pair_get("u", "k1")
        self.assertEqual(got, made)
        with self.assertRaises(KeyPairExists):
            yield self.store.key_pair_create(KeyPair(name="k1", user_id="u"))
        yield self.store.key_pair_create(KeyPair(name="k1", user_id="other"))
        yield self.store.key_pair_create(KeyPair(name="k0", user_id="u", type="x509"))
        mine = yield self.store.key_pair_get_all_by_user("u")
        self.assertEqual([(k.name, k.type) for k in mine], [("k0", "x509"), ("k1", "ssh")])
        yield self.store.key_pair_destroy("u", "k1")
        with self.assertRaises(KeypairNotFound):
            yield self.store.key_pair_get("u", "k1")
        with self.assertRaises(KeypairNotFound):
            yield self.store.key_pair_destroy("u", "k1")
        again = yield self.store.key_pair_create(KeyPair(name="k1", user_id="u"))
        self.assertNotEqual(again.id, made.id)


class SQLiteRecordTests(SQLiteBackend, RecordTests, TestCase):
    pass


class PostgresRecordTests(PostgresBackend, RecordTests, TestCase):
    pass
