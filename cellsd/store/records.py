"""Block device mappings, bandwidth usage and key pairs: the per-instance and
per-user rows the top keeps besides instances."""

from __future__ import annotations

import datetime
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from twisted.internet.defer import Deferred

from cellsd.errors import BlockDeviceMappingNotFound, KeyPairExists, KeypairNotFound
from cellsd.objects.records import BandwidthUsage, BlockDeviceMapping, KeyPair
from cellsd.store.core import (
    StoreCore,
    as_datetime,
    get_row,
    insert_row,
    live,
    live_row,
    row_values,
    soft_delete_values,
    to_obj,
    utcnow,
)
from cellsd.store.schema import block_device_mapping as bdms
from cellsd.store.schema import bw_usage_cache as bw
from cellsd.store.schema import key_pairs


def _bdm(conn: Connection, row_id: int) -> BlockDeviceMapping:
    row = get_row(conn, bdms, row_id)
    assert row is not None
    return to_obj(BlockDeviceMapping, row)


def _bdm_values(bdm: BlockDeviceMapping | Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(bdm, BlockDeviceMapping):
        bdm = BlockDeviceMapping.from_dict(bdm)
    return row_values(bdm, bdms)


def _is_swap(values: Mapping[str, Any]) -> bool:
    return (
        values.get("source_type") == "blank"
        and values.get("destination_type") == "local"
        and values.get("guest_format") == "swap"
    )


def _bdm_insert(conn: Connection, values: dict[str, Any]) -> BlockDeviceMapping:
    now = utcnow()
    values.setdefault("uuid", None)
    if not values["uuid"]:
        values["uuid"] = str(uuidlib.uuid4())
    values["created_at"] = values.get("created_at") or now
    if _is_swap(values) and values.get("instance_uuid"):
        # An instance has one swap disk: a new one replaces the others.
        conn.execute(
            sa.update(bdms)
            .where(
                bdms.c.instance_uuid == values["instance_uuid"],
                bdms.c.source_type == "blank",
                bdms.c.destination_type == "local",
                bdms.c.guest_format == "swap",
                live(bdms),
            )
            .values(soft_delete_values(bdms, now))
        )
    return _bdm(conn, insert_row(conn, bdms, values))


class RecordStore(StoreCore):
    """Block device mappings, bandwidth usage and key pairs."""

    # -- block device mappings -----------------------------------------------------

    def bdm_create(
        self, bdm: BlockDeviceMapping | Mapping[str, Any]
    ) -> Deferred[BlockDeviceMapping]:
        """Store a new mapping; a uuid is made if it has none; its row id (if
        any) is another cell's and ignored. A new swap mapping replaces the
        instance's other swap mappings."""
        values = _bdm_values(bdm)
        return self._run(_bdm_insert, values)

    def bdm_update_or_create(
        self, bdm: BlockDeviceMapping | Mapping[str, Any]
    ) -> Deferred[BlockDeviceMapping]:
        """Update the mapping with the same uuid (soft-deleted ones included),
        or create it. A mapping without uuid (from an older cell) matches the
        live mapping of its instance with the same device_name, if any."""
        values = _bdm_values(bdm)

        def update_or_create(conn: Connection) -> BlockDeviceMapping:
            if values.get("uuid"):
                cond = bdms.c.uuid == values["uuid"]
            elif values.get("device_name") and values.get("instance_uuid"):
                cond = sa.and_(
                    bdms.c.instance_uuid == values["instance_uuid"],
                    bdms.c.device_name == values["device_name"],
                    live(bdms),
                )
            else:
                return _bdm_insert(conn, dict(values))
            row = conn.execute(sa.select(bdms.c.id).where(cond).order_by(bdms.c.id.desc())).first()
            if row is None:
                return _bdm_insert(conn, dict(values))
            changes = {k: v for k, v in values.items() if k not in ("uuid", "created_at")}
            changes["updated_at"] = utcnow()
            conn.execute(sa.update(bdms).where(bdms.c.id == row.id).values(changes))
            return _bdm(conn, row.id)

        return self._run_retrying(update_or_create)

    def bdm_get_by_uuid(self, bdm_uuid: str) -> Deferred[BlockDeviceMapping]:
        """A live mapping by uuid; BlockDeviceMappingNotFound."""

        def get(conn: Connection) -> BlockDeviceMapping:
            row = live_row(conn, bdms, bdms.c.uuid == bdm_uuid)
            if row is None:
                raise BlockDeviceMappingNotFound(uuid=bdm_uuid)
            return to_obj(BlockDeviceMapping, row)

        return self._run(get)

    def bdm_get_all_by_instance(self, instance_uuid: str) -> Deferred[list[BlockDeviceMapping]]:
        """The live mappings of an instance, by boot index then id."""

        def get(conn: Connection) -> list[BlockDeviceMapping]:
            rows = conn.execute(
                sa.select(bdms)
                .where(bdms.c.instance_uuid == instance_uuid, live(bdms))
                .order_by(bdms.c.boot_index.is_(None), bdms.c.boot_index, bdms.c.id)
            ).mappings()
            return [to_obj(BlockDeviceMapping, r) for r in rows]

        return self._run(get)

    def bdm_destroy(
        self,
        instance_uuid: str,
        device_name: str | None = None,
        volume_id: str | None = None,
    ) -> Deferred[int]:
        """Soft-delete the instance's live mappings with ``device_name``, else
        those with ``volume_id``; with neither, nothing. Returns how many."""

        def destroy(conn: Connection) -> int:
            if device_name:
                match = bdms.c.device_name == device_name
            elif volume_id:
                match = bdms.c.volume_id == volume_id
            else:
                return 0
            return conn.execute(
                sa.update(bdms)
                .where(bdms.c.instance_uuid == instance_uuid, match, live(bdms))
                .values(soft_delete_values(bdms, utcnow()))
            ).rowcount

        return self._run(destroy)

    def bdm_destroy_by_uuid(self, bdm_uuid: str) -> Deferred[int]:
        """Soft-delete the live mapping with that uuid; returns 0 or 1."""

        def destroy(conn: Connection) -> int:
            return conn.execute(
                sa.update(bdms)
                .where(bdms.c.uuid == bdm_uuid, live(bdms))
                .values(soft_delete_values(bdms, utcnow()))
            ).rowcount

        return self._run(destroy)

    # -- bandwidth usage -------------------------------------------------------------

    def bw_usage_update(
        self,
        instance_uuid: str,
        mac: str,
        start_period: datetime.datetime | str,
        bw_in: int,
        bw_out: int,
        last_ctr_in: int,
        last_ctr_out: int,
        last_refreshed: datetime.datetime | str | None = None,
    ) -> Deferred[BandwidthUsage]:
        """Upsert the usage row keyed by (instance uuid, mac, start_period);
        ``last_refreshed`` defaults to now."""
        start = as_datetime(start_period)
        values = {
            "bw_in": bw_in,
            "bw_out": bw_out,
            "last_ctr_in": last_ctr_in,
            "last_ctr_out": last_ctr_out,
            "last_refreshed": as_datetime(last_refreshed) or utcnow(),
        }
        key = (bw.c.uuid == instance_uuid, bw.c.mac == mac, bw.c.start_period == start)

        def upsert(conn: Connection) -> BandwidthUsage:
            now = utcnow()
            row = conn.execute(sa.select(bw.c.id).where(*key, live(bw))).first()
            if row is not None:
                conn.execute(
                    sa.update(bw).where(bw.c.id == row.id).values({**values, "updated_at": now})
                )
                row_id = row.id
            else:
                row_id = insert_row(
                    conn,
                    bw,
                    {
                        **values,
                        "uuid": instance_uuid,
                        "mac": mac,
                        "start_period": start,
                        "created_at": now,
                    },
                )
            stored = get_row(conn, bw, row_id)
            assert stored is not None
            return to_obj(BandwidthUsage, stored)

        return self._run_retrying(upsert)

    def bw_usage_get_by_uuids(
        self, instance_uuids: Sequence[str], start_period: datetime.datetime | str
    ) -> Deferred[list[BandwidthUsage]]:
        """Usage of the instances for the period starting at ``start_period``."""
        uuids = list(instance_uuids)
        start = as_datetime(start_period)

        def get(conn: Connection) -> list[BandwidthUsage]:
            rows = conn.execute(
                sa.select(bw)
                .where(bw.c.uuid.in_(uuids), bw.c.start_period == start, live(bw))
                .order_by(bw.c.uuid, bw.c.mac)
            ).mappings()
            return [to_obj(BandwidthUsage, r) for r in rows]

        return self._run(get)

    # -- key pairs ----------------------------------------------------------------------

    def key_pair_create(self, keypair: KeyPair) -> Deferred[KeyPair]:
        """Store a key pair; KeyPairExists if the user has one of that name."""
        values = row_values(keypair, key_pairs)

        def create(conn: Connection) -> KeyPair:
            values["created_at"] = values.get("created_at") or utcnow()
            try:
                row_id = insert_row(conn, key_pairs, values)
            except IntegrityError:
                raise KeyPairExists(key_name=keypair.name) from None
            row = get_row(conn, key_pairs, row_id)
            assert row is not None
            return to_obj(KeyPair, row)

        return self._run(create)

    def key_pair_get(self, user_id: str, name: str) -> Deferred[KeyPair]:
        """The user's key pair of that name; KeypairNotFound."""

        def get(conn: Connection) -> KeyPair:
            row = live_row(
                conn, key_pairs, key_pairs.c.user_id == user_id, key_pairs.c.name == name
            )
            if row is None:
                raise KeypairNotFound(user_id=user_id, name=name)
            return to_obj(KeyPair, row)

        return self._run(get)

    def key_pair_get_all_by_user(self, user_id: str) -> Deferred[list[KeyPair]]:
        """The user's live key pairs by name."""

        def get(conn: Connection) -> list[KeyPair]:
            rows = conn.execute(
                sa.select(key_pairs)
                .where(key_pairs.c.user_id == user_id, live(key_pairs))
                .order_by(key_pairs.c.name)
            ).mappings()
            return [to_obj(KeyPair, r) for r in rows]

        return self._run(get)

    def key_pair_destroy(self, user_id: str, name: str) -> Deferred[None]:
        """Soft-delete the user's key pair of that name; KeypairNotFound."""

        def destroy(conn: Connection) -> None:
            result = conn.execute(
                sa.update(key_pairs)
                .where(
                    key_pairs.c.user_id == user_id,
                    key_pairs.c.name == name,
                    live(key_pairs),
                )
                .values(soft_delete_values(key_pairs, utcnow()))
            )
            if result.rowcount == 0:
                raise KeypairNotFound(user_id=user_id, name=name)

        return self._run(destroy)
