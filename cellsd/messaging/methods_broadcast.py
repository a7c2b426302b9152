"""What a broadcast does at each cell it reaches (behaviour §3.3).

:class:`BroadcastCellWork` is a mixin of
:class:`cellsd.messaging.methods.BroadcastMessageMethods`. The ``*_at_top``
handlers act only in a cell without parents and do nothing elsewhere; the
instance ones follow the generation rules of :mod:`cellsd.messaging.sync`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from cellsd.errors import InstanceNotFound, InvalidArguments, KeypairNotFound, NotAvailableHere
from cellsd.interfaces import ICellStore, IComputeAPI
from cellsd.messaging import sync
from cellsd.messaging.arguments import filter_values, mapping
from cellsd.messaging.message import Message
from cellsd.messaging.routing import reverse_path
from cellsd.objects import ComputeNode, KeyPair, Migration, Service
from cellsd.objects.base import parse_datetime

if TYPE_CHECKING:
    from cellsd.messaging.runner import MessageRunner


def _plain(method_name: str, name: str, value: Any) -> dict[str, Any]:
    """A record as a plain dict without its (another cell's) row id."""
    d = mapping(method_name, name, value)
    d.pop("id", None)
    return d


async def _already_recorded(store: Any, fault: dict[str, Any]) -> bool:
    """Whether the top holds this fault: same instance, creation time (set
    by the cell that recorded it), code and message. A fault without a
    creation time cannot be recognised and is always recorded."""
    uuid, created = fault.get("instance_uuid"), parse_datetime(fault.get("created_at"))
    if not uuid or created is None:
        return False
    found = await store.instance_fault_get_by_instance_uuids([uuid])
    return any(
        f.created_at == created
        and f.code == fault.get("code", 500)
        and f.message == fault.get("message")
        for f in found.get(uuid, [])
    )


class BroadcastCellWork:
    """The broadcast handlers of the seed's MessageRunner methods."""

    log = Logger()
    runner: MessageRunner
    store: ICellStore | None
    compute: IComputeAPI | None

    def _store(self) -> ICellStore:
        if self.store is None:
            raise NotAvailableHere(cell_name=self.runner.my_name, what="store")
        return self.store

    def _top_store(self) -> ICellStore | None:
        """The store when this cell is the top, else None (nothing to do)."""
        if not self.runner.state.is_top():
            return None
        return self._store()

    # -- instances at the top ----------------------------------------------------------

    async def instance_update_at_top(self, message: Message, instance: Any) -> None:
        store = self._top_store()
        if store is None:
            return
        # The reversed routing path: the owning cell's path from this top.
        outcome = await sync.apply_instance_at_top(
            store, instance, reverse_path(message.routing_path)
        )
        self.log.debug("instance update at top: {outcome}", outcome=outcome)

    async def instance_destroy_at_top(self, message: Message, instance: Any) -> None:
        store = self._top_store()
        if store is not None:
            await sync.destroy_instance_at_top(store, instance, reverse_path(message.routing_path))

    async def instance_fault_create_at_top(self, message: Message, instance_fault: Any) -> None:
        store = self._top_store()
        if store is not None:
            fault = _plain("instance_fault_create_at_top", "instance_fault", instance_fault)
            if await _already_recorded(store, fault):
                # The same fault again (its report sent twice under two
                # message uuids, or applied just before a crash that lost
                # the record of its uuid): recorded once.
                self.log.info("fault of {uuid} already recorded", uuid=fault.get("instance_uuid"))
                return
            await store.instance_fault_create(fault)

    async def bw_usage_update_at_top(
        self, message: Message, bw_update_info: Mapping[str, Any]
    ) -> None:
        store = self._top_store()
        if store is None:
            return
        info = mapping(
            "bw_usage_update_at_top",
            "bw_update_info",
            bw_update_info,
            ("mac", "start_period", "bw_in", "bw_out", "last_ctr_in", "last_ctr_out"),
        )
        if not (info.get("uuid") or info.get("instance_uuid")):
            raise InvalidArguments(
                method_name="bw_usage_update_at_top", reason="bw_update_info has no 'uuid'"
            )
        await store.bw_usage_update(
            info.get("uuid") or info["instance_uuid"],
            info["mac"],
            info["start_period"],
            info["bw_in"],
            info["bw_out"],
            info["last_ctr_in"],
            info["last_ctr_out"],
            info.get("last_refreshed"),
        )

    async def consoleauth_delete_tokens(self, message: Message, instance_uuid: str) -> None:
        store = self._top_store()
        if store is not None:
            await store.console_auth_token_delete_all_for_instance(instance_uuid)

    async def bdm_update_or_create_at_top(
        self, message: Message, bdm: Any, create: Any = None
    ) -> None:
        """A mapping reported from below, matched by its uuid (§8.4 #25).

        Liberty sent the create flag inverted and could duplicate mappings
        (§8.4 #26); the flag is taken as meant: True and None both make sure
        the mapping exists, keyed by uuid, so a repeated report creates
        nothing twice (a mapping from an older cell, without uuid, is created
        when asked to); False only updates a mapping the top already has,
        found by uuid, else by device name or volume id.
        """
        store = self._top_store()
        if store is None:
            return
        values = _plain("bdm_update_or_create_at_top", "bdm", bdm)
        if create is False:
            existing = await store.bdm_get_all_by_instance(str(values.get("instance_uuid")))
            match = next(
                (
                    b
                    for b in existing
                    if (values.get("uuid") and b.uuid == values["uuid"])
                    or (values.get("device_name") and b.device_name == values["device_name"])
                    or (values.get("volume_id") and b.volume_id == values["volume_id"])
                ),
                None,
            )
            if match is None:
                self.log.warn(
                    "no block device mapping of {uuid} matches an update; ignored",
                    uuid=values.get("instance_uuid"),
                )
                return
            values["uuid"] = match.uuid
            await store.bdm_update_or_create(values)
        elif create and not values.get("uuid"):
            await store.bdm_create(values)
        else:
            await store.bdm_update_or_create(values)

    async def bdm_destroy_at_top(
        self,
        message: Message,
        instance_uuid: str,
        device_name: Any = None,
        volume_id: Any = None,
    ) -> None:
        store = self._top_store()
        if store is not None:
            await store.bdm_destroy(instance_uuid, device_name, volume_id)

    async def instance_digests_at_top(
        self, message: Message, digests: Mapping[str, Any] | None
    ) -> dict[str, list[list[Any]]] | None:
        """Anti-entropy at the top: the buckets of the asking cell's
        instances that differ from its digests; None below the top."""
        store = self._top_store()
        if store is None:
            return None
        return await sync.digests_at_top(
            store, reverse_path(message.routing_path), dict(digests or {})
        )

    async def get_keypair_at_top(self, message: Message, user_id: str, name: str) -> KeyPair | None:
        store = self._top_store()
        if store is None:
            return None
        try:
            found: KeyPair = await store.key_pair_get(user_id, name)
        except KeypairNotFound:
            return None
        return found

    # -- every cell -------------------------------------------------------------------------

    async def instance_delete_everywhere(
        self, message: Message, instance: Any, delete_type: str
    ) -> None:
        """Delete the instance if it lives here (a cell without it, or
        without compute, has nothing to do)."""
        if self.compute is None or self.store is None:
            return
        if isinstance(instance, Mapping):
            uuid = instance.get("uuid")
        elif isinstance(instance, str):
            uuid = instance
        else:
            uuid = getattr(instance, "uuid", None)
        if not uuid:
            raise InvalidArguments(
                method_name="instance_delete_everywhere", reason="instance has no uuid"
            )
        try:
            current = await self.store.instance_get_by_uuid(str(uuid))
        except InstanceNotFound:
            return
        if delete_type == "soft":
            await self.compute.soft_delete(message.ctxt, current)
        else:
            await self.compute.delete(message.ctxt, current)

    async def sync_instances(
        self, message: Message, project_id: str | None, updated_since: Any, deleted: Any
    ) -> None:
        """Report this cell's matching instances to the top, each whole."""
        if self.store is None:
            return
        filters = sync.sync_filters(project_id, updated_since, deleted)
        count = await sync.report_instances(self.runner, self.store, message.ctxt, filters)
        self.log.info("sync_instances: {count} instances reported up", count=count)

    async def service_get_all(
        self, message: Message, filters: Mapping[str, Any] | None = None
    ) -> list[Service]:
        """``disabled`` selects in the query; every other filter must equal
        the service's attribute."""
        wanted = filter_values("service_get_all", filters)
        disabled = wanted.pop("disabled", None)
        services = await self._store().service_get_all(disabled)
        return [s for s in services if all(getattr(s, k, None) == v for k, v in wanted.items())]

    async def compute_node_get_all(
        self, message: Message, hypervisor_match: str | None = None
    ) -> list[ComputeNode]:
        found: list[ComputeNode] = await self._store().compute_node_get_all(hypervisor_match)
        return found

    async def compute_node_stats(self, message: Message) -> dict[str, int]:
        stats: dict[str, int] = await self._store().compute_node_statistics()
        return stats

    async def task_log_get_all(
        self,
        message: Message,
        task_name: str,
        period_beginning: Any,
        period_ending: Any,
        host: Any = None,
        state: Any = None,
    ) -> list[dict[str, Any]]:
        logs = await self._store().task_log_get_all(
            task_name, period_beginning, period_ending, host, state
        )
        return [t.to_dict() for t in logs]

    async def get_migrations(
        self, message: Message, filters: Mapping[str, Any] | None
    ) -> list[Migration]:
        wanted = filter_values("get_migrations", filters)
        found: list[Migration] = await self._store().migration_get_all_by_filters(wanted)
        return found
