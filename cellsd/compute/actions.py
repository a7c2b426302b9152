"""The instance actions of the simulated compute (IComputeAPI).

Each action checks and sets its task_state at once (refusing with
InstanceInvalidState), records an instance action and event under the
request id, then finishes in the background: see :mod:`cellsd.compute.core`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from twisted.internet.defer import Deferred

from cellsd.compute import states as st
from cellsd.compute.core import ComputeCore, flavor_of
from cellsd.compute.resources import Need
from cellsd.context import RequestContext
from cellsd.deferreds import async_to_deferred
from cellsd.errors import (
    CannotResizeToSameFlavor,
    ComputeHostNotFound,
    InstanceInvalidState,
    InvalidArguments,
    UnableToMigrateToSelf,
)
from cellsd.objects import Flavor, Instance, Migration

A = st.ACTIONS

#: Instance fields a resize's extra_instance_updates or a rebuild's kwargs
#: may set; anything else is ignored (ids, states, hosts stay ours).
SETTABLE = frozenset(
    {
        "display_name",
        "display_description",
        "auto_disk_config",
        "access_ip_v4",
        "access_ip_v6",
        "key_name",
        "progress",
        "os_type",
        "architecture",
        "vm_mode",
    }
)


def _settable(values: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (values or {}).items() if k in SETTABLE}


def sizes_of(flavor: Flavor) -> dict[str, Any]:
    """The instance columns that follow from its flavor."""
    return {
        "flavor": flavor,
        "instance_type_id": flavor.id,
        "memory_mb": flavor.memory_mb,
        "vcpus": flavor.vcpus,
        "root_gb": flavor.root_gb,
        "ephemeral_gb": flavor.ephemeral_gb,
    }


def network_info(inst: Instance) -> list[dict[str, Any]]:
    """A deterministic simulated network for an instance."""
    n = int(str(inst.uuid).replace("-", ""), 16)
    mac = f"fa:16:3e:{(n >> 16) & 0xFF:02x}:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}"
    return [
        {
            "id": str(inst.uuid),
            "address": mac,
            "network": {
                "label": "private",
                "subnets": [
                    {"cidr": "10.0.0.0/16", "ips": [{"address": f"10.0.{n % 250}.{2 + n % 250}"}]}
                ],
            },
        }
    ]


class InstanceActions(ComputeCore):
    """start, stop, reboot, pause ... delete: the seed's instance actions."""

    # -- power -----------------------------------------------------------------

    async def _simple(
        self,
        ctxt: RequestContext,
        instance: Instance,
        action: st.Action,
        final: Mapping[str, Any],
        steps: float = 1.0,
        details: str | None = None,
    ) -> tuple[Instance, Deferred[Any]]:
        """An action that only walks its task states and lands in ``final``;
        the instance as it started, and the Deferred of its background work."""
        inst = await self.begin(ctxt, instance, action)

        async def work() -> str | None:
            done = await self.steps(ctxt, inst, action) if action.steps else inst
            if not action.steps:
                await self.sleep(steps)
            last = action.steps[-1] if action.steps else action.task_state
            await self.save(ctxt, str(done.uuid), {**final, "task_state": None}, [last])
            return details

        return inst, await self.run_action(ctxt, inst, action, work)

    @async_to_deferred
    async def start(self, ctxt: RequestContext, instance: Instance) -> Instance:
        final = {"vm_state": st.ACTIVE, "power_state": st.RUNNING}
        inst, _ = await self._simple(ctxt, instance, A["start"], final)
        return inst

    @async_to_deferred
    async def stop(
        self,
        ctxt: RequestContext,
        instance: Instance,
        do_cast: bool = True,
        clean_shutdown: bool = True,
    ) -> Any:
        # A clean shutdown waits for the guest (two steps); otherwise one.
        final = {"vm_state": st.STOPPED, "power_state": st.SHUTDOWN}
        inst, running = await self._simple(
            ctxt,
            instance,
            A["stop"],
            final,
            steps=2.0 if clean_shutdown else 1.0,
            details=f"clean_shutdown={bool(clean_shutdown)}",
        )
        if not do_cast:
            await running
            return None
        return inst

    @async_to_deferred
    async def reboot(self, ctxt: RequestContext, instance: Instance, reboot_type: str) -> Instance:
        kind = str(reboot_type).upper()
        if kind not in ("SOFT", "HARD"):
            raise InvalidArguments(method_name="reboot", reason=f"reboot_type {reboot_type!r}")
        action = A["reboot_soft" if kind == "SOFT" else "reboot_hard"]
        final = {"vm_state": st.ACTIVE, "power_state": st.RUNNING}
        inst, _ = await self._simple(ctxt, instance, action, final, details=kind)
        return inst

    @async_to_deferred
    async def pause(self, ctxt: RequestContext, instance: Instance) -> Instance:
        final = {"vm_state": st.PAUSED, "power_state": st.POWER_PAUSED}
        return (await self._simple(ctxt, instance, A["pause"], final))[0]

    @async_to_deferred
    async def unpause(self, ctxt: RequestContext, instance: Instance) -> Instance:
        final = {"vm_state": st.ACTIVE, "power_state": st.RUNNING}
        return (await self._simple(ctxt, instance, A["unpause"], final))[0]

    @async_to_deferred
    async def suspend(self, ctxt: RequestContext, instance: Instance) -> Instance:
        final = {"vm_state": st.SUSPENDED, "power_state": st.POWER_SUSPENDED}
        return (await self._simple(ctxt, instance, A["suspend"], final))[0]

    @async_to_deferred
    async def resume(self, ctxt: RequestContext, instance: Instance) -> Instance:
        final = {"vm_state": st.ACTIVE, "power_state": st.RUNNING}
        return (await self._simple(ctxt, instance, A["resume"], final))[0]

    @async_to_deferred
    async def set_admin_password(
        self, ctxt: RequestContext, instance: Instance, password: Any = None
    ) -> Instance:
        # The password itself is never stored or logged.
        action = A["set_admin_password"]
        return (await self._simple(ctxt, instance, action, {}, details="password changed"))[0]

    @async_to_deferred
    async def lock(self, ctxt: RequestContext, instance: Instance) -> Instance:
        by = "admin" if ctxt.is_admin else "owner"
        return await self.save(ctxt, str(instance.uuid), {"locked": True, "locked_by": by})

    @async_to_deferred
    async def unlock(self, ctxt: RequestContext, instance: Instance) -> Instance:
        return await self.save(ctxt, str(instance.uuid), {"locked": False, "locked_by": None})

    # -- images -------------------------------------------------------------------

    @async_to_deferred
    async def snapshot(self, ctxt: RequestContext, instance: Instance, image_id: str) -> Instance:
        inst, _ = await self._simple(ctxt, instance, A["snapshot"], {}, details=f"image {image_id}")
        return inst

    @async_to_deferred
    async def backup(
        self,
        ctxt: RequestContext,
        instance: Instance,
        image_id: str,
        backup_type: str,
        rotation: int,
    ) -> Instance:
        """Back up; the instance's ``backups`` system metadata lists the kept
        backups, the newest ``rotation`` of each backup type."""
        if int(rotation) < 0:
            raise InvalidArguments(method_name="backup", reason="rotation must be >= 0")
        action = A["backup"]
        inst = await self.begin(ctxt, instance, action)

        async def work() -> str:
            done = await self.steps(ctxt, inst, action)
            kept = orjson.loads(done.system_metadata.get("backups") or "[]")
            kept.append(
                {"image_id": image_id, "backup_type": backup_type, "at": self.now().isoformat()}
            )
            same = [b for b in kept if b["backup_type"] == backup_type]
            dropped = same[: max(0, len(same) - int(rotation))]
            kept = [b for b in kept if b not in dropped]
            sysmeta = {**done.system_metadata, "backups": orjson.dumps(kept).decode()}
            await self.save(
                ctxt,
                str(done.uuid),
                {"task_state": None, "system_metadata": sysmeta},
                [action.steps[-1]],
            )
            return f"image {image_id}; rotated out {[b['image_id'] for b in dropped]}"

        await self.run_action(ctxt, inst, action, work)
        return inst

    # -- rebuild ---------------------------------------------------------------------

    @async_to_deferred
    async def rebuild(
        self,
        ctxt: RequestContext,
        instance: Instance,
        image_href: Any,
        admin_password: Any,
        files_to_inject: Any = None,
        **kwargs: Any,
    ) -> Instance:
        action = A["rebuild"]
        inst = await self.begin(ctxt, instance, action)
        was_stopped = inst.vm_state == st.STOPPED
        preserve = bool(kwargs.get("preserve_ephemeral", False))

        async def work() -> str:
            done = await self.steps(ctxt, inst, action)
            final = {
                **_settable(kwargs),
                "vm_state": st.STOPPED if was_stopped else st.ACTIVE,
                "power_state": st.SHUTDOWN if was_stopped else st.RUNNING,
                "task_state": None,
                "image_ref": image_href,
                "launched_at": self.now(),
            }
            await self.save(ctxt, str(done.uuid), final, [action.steps[-1]])
            files = len(files_to_inject or [])
            return f"image {image_href}; preserve_ephemeral={preserve}; files={files}"

        await self.run_action(ctxt, inst, action, work)
        return inst

    # -- network ------------------------------------------------------------------------

    @async_to_deferred
    async def reset_network(self, ctxt: RequestContext, instance: Instance) -> Instance:
        action = A["reset_network"]
        inst = await self.begin(ctxt, instance, action)

        async def work() -> str:
            await self.sleep()
            await self.save(ctxt, str(inst.uuid), {"info_cache": network_info(inst)})
            return "network reset"

        await self.run_action(ctxt, inst, action, work)
        return inst

    @async_to_deferred
    async def inject_network_info(self, ctxt: RequestContext, instance: Instance) -> Instance:
        action = A["inject_network_info"]
        inst = await self.begin(ctxt, instance, action)

        async def work() -> str:
            await self.sleep()
            return f"injected {len(inst.info_cache or [])} interfaces"

        await self.run_action(ctxt, inst, action, work)
        return inst

    # -- resize and migration ----------------------------------------------------------------

    @async_to_deferred
    async def resize(
        self,
        ctxt: RequestContext,
        instance: Instance,
        flavor: Any = None,
        clean_shutdown: bool = True,
        **extra_instance_updates: Any,
    ) -> Instance:
        """Resize to ``flavor``; without one, a cold migration to another
        host with the same flavor. The new share is claimed on the
        destination (first fit, another host preferred) before anything
        moves, so a resize that cannot fit fails with NoValidHost and leaves
        the instance as it was."""
        action = A["resize"]
        new = flavor_of(flavor)
        old = flavor_of(instance.flavor)
        if new is not None and old is not None and new.flavorid == old.flavorid:
            raise CannotResizeToSameFlavor()
        inst = await self.begin(ctxt, instance, action, _settable(extra_instance_updates))
        uuid = str(inst.uuid)
        new = new or flavor_of(inst.flavor)
        assert new is not None
        old = flavor_of(inst.flavor) or new
        try:
            await self.refresh_disabled()
            need = Need.of(new)
            dest = self.pick_host(need, exclude=[inst.host]) or inst.host
            self.claim_or_fail(uuid, "resize", dest, need)
        except Exception:
            await self.save(ctxt, uuid, {"task_state": None}, [action.task_state])
            raise
        await self.write_nodes()
        migration = await self.store.migration_create(
            Migration(
                source_compute=inst.host,
                dest_compute=dest,
                source_node=inst.node,
                dest_node=dest,
                dest_host=dest,
                old_instance_type_id=old.id,
                new_instance_type_id=new.id,
                instance_uuid=uuid,
                status="pre-migrating",
                migration_type="migration" if flavor is None else "resize",
            )
        )
        assert migration.id is not None
        mig_id = migration.id
        old_vm_state = inst.vm_state

        async def work() -> str:
            statuses = {
                st.RESIZE_MIGRATING: "migrating",
                st.RESIZE_MIGRATED: "post-migrating",
                st.RESIZE_FINISH: "finished",
            }
            current = action.task_state
            done = inst
            for step in action.steps:
                await self.sleep(2.0 if step == st.RESIZE_MIGRATING and clean_shutdown else 1.0)
                values: dict[str, Any] = {"task_state": step}
                if step == st.RESIZE_FINISH:
                    values |= {**sizes_of(new), "host": dest, "node": dest}
                done = await self.save(ctxt, uuid, values, [current])
                await self.store.migration_update(mig_id, {"status": statuses[step]})
                current = step
            await self.sleep()
            sysmeta = {
                **done.system_metadata,
                "old_flavor": orjson.dumps(old.to_dict(include_unset=True)).decode(),
                "old_vm_state": old_vm_state or st.ACTIVE,
                "old_host": inst.host or "",
                "migration_id": str(mig_id),
            }
            final = {
                "vm_state": st.RESIZED,
                "task_state": None,
                "power_state": st.POWER_OF.get(old_vm_state or st.ACTIVE, st.RUNNING),
                "system_metadata": sysmeta,
            }
            await self.save(ctxt, uuid, final, [current])
            return f"{inst.host} -> {dest}; flavor {old.flavorid} -> {new.flavorid}"

        await self.run_action(ctxt, inst, action, work)
        return inst

    def _resize_memo(self, inst: Instance) -> tuple[Flavor | None, str, str | None, int | None]:
        meta = inst.system_metadata
        old = Flavor.from_dict(orjson.loads(meta["old_flavor"])) if meta.get("old_flavor") else None
        mig = int(meta["migration_id"]) if meta.get("migration_id") else None
        return old, meta.get("old_vm_state") or st.ACTIVE, meta.get("old_host") or None, mig

    @staticmethod
    def _without_memo(meta: Mapping[str, str]) -> dict[str, str]:
        memo = ("old_flavor", "old_vm_state", "old_host", "migration_id")
        return {k: v for k, v in meta.items() if k not in memo}

    @async_to_deferred
    async def confirm_resize(self, ctxt: RequestContext, instance: Instance) -> Instance:
        action = A["confirm_resize"]
        inst = await self.begin(ctxt, instance, action)
        uuid = str(inst.uuid)
        _, old_vm_state, _, mig = self._resize_memo(inst)

        async def work() -> str:
            if mig is not None:
                await self.store.migration_update(mig, {"status": "confirming"})
            await self.sleep()
            # The old host's share is freed; the new one becomes the instance's.
            self.claims.release(uuid, "instance")
            self.claims.move(uuid, "resize", "instance")
            await self.write_nodes()
            final = {
                "vm_state": old_vm_state,
                "task_state": None,
                "power_state": st.POWER_OF.get(old_vm_state, st.RUNNING),
                "system_metadata": self._without_memo(inst.system_metadata),
            }
            await self.save(ctxt, uuid, final, [action.task_state])
            if mig is not None:
                await self.store.migration_update(mig, {"status": "confirmed"})
            return "confirmed"

        await self.run_action(ctxt, inst, action, work)
        return inst

    @async_to_deferred
    async def revert_resize(self, ctxt: RequestContext, instance: Instance) -> Instance:
        action = A["revert_resize"]
        inst = await self.begin(ctxt, instance, action)
        uuid = str(inst.uuid)
        old, old_vm_state, old_host, mig = self._resize_memo(inst)

        async def work() -> str:
            if mig is not None:
                await self.store.migration_update(mig, {"status": "reverting"})
            await self.sleep()
            self.claims.release(uuid, "resize")
            await self.write_nodes()
            final: dict[str, Any] = {
                "vm_state": old_vm_state,
                "task_state": None,
                "power_state": st.POWER_OF.get(old_vm_state, st.RUNNING),
                "system_metadata": self._without_memo(inst.system_metadata),
            }
            if old is not None:
                final |= sizes_of(old)
            if old_host:
                final |= {"host": old_host, "node": old_host}
            await self.save(ctxt, uuid, final, [action.task_state])
            if mig is not None:
                await self.store.migration_update(mig, {"status": "reverted"})
            return f"back to {old_host}"

        await self.run_action(ctxt, inst, action, work)
        return inst

    @async_to_deferred
    async def live_migrate(
        self,
        ctxt: RequestContext,
        instance: Instance,
        block_migration: Any,
        disk_over_commit: Any,
        host_name: str | None,
    ) -> Instance:
        if host_name and host_name not in self.hosts:
            raise ComputeHostNotFound(host=host_name)
        if host_name and host_name == instance.host:
            raise UnableToMigrateToSelf(instance_id=instance.uuid, host=host_name)
        action = A["live_migrate"]
        inst = await self.begin(ctxt, instance, action)
        uuid = str(inst.uuid)
        try:
            await self.refresh_disabled()
            need = Need.of(inst.flavor)
            dest = host_name or self.pick_host(need, exclude=[inst.host])
            self.claim_or_fail(uuid, "resize", dest, need)
        except Exception:
            await self.save(ctxt, uuid, {"task_state": None}, [action.task_state])
            raise
        assert dest is not None
        await self.write_nodes()
        migration = await self.store.migration_create(
            Migration(
                source_compute=inst.host,
                dest_compute=dest,
                source_node=inst.node,
                dest_node=dest,
                dest_host=dest,
                old_instance_type_id=inst.instance_type_id,
                new_instance_type_id=inst.instance_type_id,
                instance_uuid=uuid,
                status="accepted",
                migration_type="live-migration",
            )
        )
        assert migration.id is not None
        mig_id = migration.id

        async def work() -> str:
            await self.sleep()
            await self.store.migration_update(mig_id, {"status": "running"})
            await self.sleep()
            self.claims.release(uuid, "instance")
            self.claims.move(uuid, "resize", "instance")
            await self.write_nodes()
            final = {"host": dest, "node": dest, "task_state": None}
            await self.save(ctxt, uuid, final, [action.task_state])
            await self.store.migration_update(mig_id, {"status": "completed"})
            self._log_report(self.reporter.consoleauth_delete_tokens(ctxt, uuid), "tokens")
            return (
                f"{inst.host} -> {dest}; block_migration={bool(block_migration)}; "
                f"disk_over_commit={bool(disk_over_commit)}"
            )

        await self.run_action(ctxt, inst, action, work)
        return inst

    # -- deletion ------------------------------------------------------------------------------

    @async_to_deferred
    async def soft_delete(self, ctxt: RequestContext, instance: Instance) -> Instance:
        if instance.launched_at is None:
            raise InstanceInvalidState(
                instance_uuid=instance.uuid, attr="launched_at", state=None, method="soft_delete"
            )
        final = {"vm_state": st.SOFT_DELETED, "power_state": st.SHUTDOWN}
        return (await self._simple(ctxt, instance, A["soft_delete"], final))[0]

    @async_to_deferred
    async def delete(self, ctxt: RequestContext, instance: Instance) -> Instance:
        return await self._delete(ctxt, instance, A["delete"])

    @async_to_deferred
    async def force_delete(self, ctxt: RequestContext, instance: Instance) -> Instance:
        return await self._delete(ctxt, instance, A["force_delete"])

    async def _delete(
        self, ctxt: RequestContext, instance: Instance, action: st.Action
    ) -> Instance:
        """Accepted in any state (a stuck build must go), once: a second
        delete while one runs is refused. Frees the claims, soft-deletes the
        row here and reports the destroy up."""
        current = await self.store.instance_get_by_uuid(str(instance.uuid))
        if current.task_state == st.DELETING:
            raise self.invalid(current, "task_state", st.DELETING, action.method)
        inst = await self.begin(ctxt, current, action)
        uuid = str(inst.uuid)

        async def work() -> str:
            await self.sleep()
            final = {
                "vm_state": st.DELETED,
                "task_state": None,
                "power_state": st.NOSTATE,
                "terminated_at": self.now(),
            }
            await self.save(ctxt, uuid, final, [st.DELETING])
            self.claims.release(uuid, "instance")
            self.claims.release(uuid, "resize")
            await self.write_nodes()
            destroyed = await self.store.instance_destroy(uuid)
            self.report_destroy(ctxt, destroyed)
            return "deleted"

        await self.run_action(ctxt, inst, action, work)
        return inst
