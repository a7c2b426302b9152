"""SimulatedCompute: a real in-process compute layer for a cell.

Its hosts come from ``[[compute.hosts]]``; at start each is registered in the
cell's store as a nova-compute service with a compute node, and the claims
of the instances already stored are counted again. Instances are built on
the first host with room (first fit), and every action of the seeds runs
through the vm_state / task_state machine of :mod:`cellsd.compute.states`,
each change written to the store (bumping the instance's generation) and
reported to the top with the ``*_at_top`` messages.

One SimulatedCompute per cell is assumed: its claims are kept in memory (and
mirrored to the compute nodes), so two workers sharing a store would each
count only their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from zope.interface import implementer

from cellsd.compute import states as st
from cellsd.compute.actions import InstanceActions, network_info, sizes_of
from cellsd.compute.core import UpwardReports, flavor_of
from cellsd.compute.hostops import HostOperations
from cellsd.compute.resources import Need, capacities
from cellsd.context import RequestContext, get_admin_context
from cellsd.deferreds import async_to_deferred
from cellsd.errors import ComputeHostNotFound, HostBinaryNotFound, InstanceExists, NoValidHost
from cellsd.interfaces import IComputeAPI
from cellsd.objects import BlockDeviceMapping, ComputeNode, Instance, Service
from cellsd.store.hosts import COMPUTE_BINARY

#: Fields a build request's instance passes on to the record built here.
_FROM_REQUEST = (
    "uuid",
    "user_id",
    "project_id",
    "image_ref",
    "kernel_id",
    "ramdisk_id",
    "hostname",
    "display_name",
    "display_description",
    "key_name",
    "key_data",
    "user_data",
    "reservation_id",
    "availability_zone",
    "os_type",
    "architecture",
    "vm_mode",
    "config_drive",
    "access_ip_v4",
    "access_ip_v6",
    "auto_disk_config",
    "metadata",
    "system_metadata",
    "launch_index",
)


def _request_values(proto: Instance | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(proto, Instance):
        return {n: getattr(proto, n) for n in proto.obj_set_fields() if n in _FROM_REQUEST}
    return {k: v for k, v in proto.items() if k in _FROM_REQUEST}


@implementer(IComputeAPI)
class SimulatedCompute(InstanceActions, HostOperations):
    """``SimulatedCompute(store, reporter, clock, hosts, cell_name, ...)``,
    then ``startup()``; ``shutdown()`` at the end."""

    def __init__(
        self,
        store: Any,
        reporter: UpwardReports,
        clock: Any,
        hosts: Sequence[Any],
        cell_name: str,
        **options: Any,
    ) -> None:
        super().__init__(store, reporter, clock, hosts, cell_name, **options)
        self._report_counts = {}
        self._loop: task.LoopingCall | None = None

    # -- lifecycle --------------------------------------------------------------

    @async_to_deferred
    async def startup(self) -> None:
        """Register each host (get or create its service and compute node),
        count the claims of the stored instances, and start heartbeating.
        Builds and actions that arrive meanwhile wait for it to finish."""
        self.expect_startup()
        try:
            await self._startup()
        finally:
            self.startup_finished()

    async def _startup(self) -> None:
        self.started_at = self.clock.seconds()
        for host in self.hosts.values():
            try:
                service = await self.store.service_get_by_host_and_binary(host.name, COMPUTE_BINARY)
            except HostBinaryNotFound:
                service = await self.store.service_create(
                    Service(
                        host=host.name,
                        binary=COMPUTE_BINARY,
                        topic="compute",
                        last_seen_up=self.now(),
                    )
                )
            host.service_id, host.disabled = service.id, service.disabled
            sizes: dict[str, Any] = {
                "vcpus": host.vcpus,
                "memory_mb": host.memory_mb,
                "local_gb": host.disk_gb,
            }
            try:
                node = (await self.store.compute_node_get_all_by_host(host.name))[0]
                assert node.id is not None
                await self.store.compute_node_update(node.id, sizes)
            except ComputeHostNotFound:
                node = await self.store.compute_node_create(
                    ComputeNode(
                        service_id=service.id,
                        host=host.name,
                        hypervisor_type="simulated",
                        hypervisor_version=1,
                        hypervisor_hostname=f"{self.cell_name}-{host.name}",
                        host_ip="127.0.0.1",
                        cpu_info="{}",
                        supported_instances=[["x86_64", "simulated", "hvm"]],
                        ram_allocation_ratio=1.0,
                        cpu_allocation_ratio=16.0,
                        **sizes,
                    )
                )
            host.node_id = node.id
        await self.recount()
        await self.heartbeat()
        loop = self._loop = task.LoopingCall(self._beat)
        loop.clock = self.clock
        loop.start(self.heartbeat_interval, now=False)

    def _beat(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self.heartbeat())
        d.addErrback(lambda f: self.log.failure("compute heartbeat failed", f))
        return d

    async def recount(self) -> None:
        """Claims from the store: every live instance on one of our hosts
        holds its flavor there; a resize waiting for confirmation also holds
        the old flavor on the old host."""
        stored = await self.store.instance_get_all_by_filters(
            {"deleted": False, "host": list(self.hosts)}
        )
        for inst in stored:
            uuid = str(inst.uuid)
            if inst.vm_state == st.RESIZED and inst.system_metadata.get("old_flavor"):
                old, _, old_host, _ = self._resize_memo(inst)
                self.claims.force(uuid, "resize", str(inst.host), Need.of(inst.flavor))
                self.claims.force(uuid, "instance", old_host or str(inst.host), Need.of(old))
            else:
                self.claims.force(uuid, "instance", str(inst.host), Need.of(inst.flavor))
        await self.write_nodes()
        await self._clear_interrupted()

    async def _clear_interrupted(self) -> None:
        """Tasks a stop interrupted: a build ends in ERROR, any other task is
        cleared so the instance accepts actions again."""
        ctxt = get_admin_context()
        for inst in await self.store.instance_get_all_by_filters({"deleted": False}):
            if inst.task_state is None and inst.vm_state != st.BUILDING:
                continue
            values: dict[str, Any] = {"task_state": None}
            if inst.vm_state == st.BUILDING:
                values["vm_state"] = st.ERROR
            self.log.warn(
                "clearing task {task} of {uuid}, interrupted by a restart",
                task=inst.task_state,
                uuid=inst.uuid,
            )
            await self.save(ctxt, str(inst.uuid), values)

    @async_to_deferred
    async def shutdown(self) -> None:
        """Stop heartbeating and cancel the actions under way (their
        instances keep their task_state; startup() clears it, as Nova's
        compute does for tasks a restart interrupted)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for d in list(self._busy):
            d.cancel()
        await self.settled()

    # -- capacity -------------------------------------------------------------------

    def capacities(self) -> dict[str, Any]:
        return capacities(self.hosts.values(), self.flavors, self.reserve_percent)

    def can_host(self, flavor: Any) -> bool:
        return self.pick_host(Need.of(flavor_of(flavor))) is not None

    # -- build --------------------------------------------------------------------------

    @async_to_deferred
    async def build_instances(
        self, ctxt: RequestContext, instances: Sequence[Any], **build_kwargs: Any
    ) -> list[Instance]:
        """Create each instance here (building / scheduling), report it up,
        record its ``create`` action, claim a host (first fit) and build it
        in the background: networking, block device mapping, spawning,
        active. No host with room: ERROR with a NoValidHost fault."""
        props = build_kwargs.get("filter_properties") or {}
        first = instances[0] if instances else {}
        flavor = flavor_of(props.get("instance_type")) or flavor_of(
            first.flavor if isinstance(first, Instance) else first.get("flavor")
        )
        if flavor is None:
            flavor = self.flavors[0]
        image = build_kwargs.get("image") or {}
        await self.until_started()
        await self.refresh_disabled()
        created = []
        for index, proto in enumerate(instances):
            values = _request_values(proto)
            if len(instances) > 1 and values.get("display_name"):
                values["display_name"] = f"{values['display_name']}-{index + 1}"
            if not values.get("image_ref") and isinstance(image, Mapping):
                values["image_ref"] = image.get("id")
            record = Instance(
                **values,
                **sizes_of(flavor),
                vm_state=st.BUILDING,
                task_state=st.SCHEDULING,
                power_state=st.NOSTATE,
                cell_name=self.cell_name,
            )
            try:
                stored = await self.store.instance_create(record)
            except InstanceExists:
                self.log.warn("instance {uuid} is already here; not built again", uuid=record.uuid)
                continue
            self.report(ctxt, stored)
            await self._create_bdms(ctxt, stored, build_kwargs.get("block_device_mapping"))
            host = self.pick_host(Need.of(flavor))
            if host is not None:
                self.claims.claim(str(stored.uuid), "instance", host, Need.of(flavor))
            created.append(stored)
            await self.run_action(
                ctxt, stored, st.ACTIONS["build"], _Build(self, ctxt, stored, host).run
            )
        await self.write_nodes()
        return created

    async def _create_bdms(self, ctxt: RequestContext, inst: Instance, bdms: Any) -> None:
        """The build's block device mappings, stored here and sent up. A
        create is sent as create=True (behaviour §8.4 #26: Liberty sent the
        flag inverted)."""
        for item in bdms or []:
            values = item.to_dict() if isinstance(item, BlockDeviceMapping) else dict(item)
            values = {k: v for k, v in values.items() if k not in ("id", "uuid")}
            values["instance_uuid"] = inst.uuid
            bdm = await self.store.bdm_create(values)
            self._log_report(
                self.reporter.bdm_update_or_create_at_top(ctxt, bdm, create=True), "a BDM"
            )


class _Build:
    """The background part of one instance's build."""

    def __init__(
        self, compute: SimulatedCompute, ctxt: RequestContext, inst: Instance, host: str | None
    ) -> None:
        self.compute, self.ctxt, self.inst, self.host = compute, ctxt, inst, host

    async def run(self) -> str:
        c, ctxt, uuid = self.compute, self.ctxt, str(self.inst.uuid)
        if self.host is None:
            raise NoValidHost(reason="No host of this cell has room for the flavor.")
        await c.sleep()
        inst = await c.save(
            ctxt,
            uuid,
            {
                "task_state": st.NETWORKING,
                "host": self.host,
                "node": self.host,
                "launched_on": self.host,
                "info_cache": network_info(self.inst),
            },
            [st.SCHEDULING],
        )
        await c.sleep()
        inst = await c.save(ctxt, uuid, {"task_state": st.BLOCK_DEVICE_MAPPING}, [st.NETWORKING])
        await c.sleep()
        inst = await c.save(ctxt, uuid, {"task_state": st.SPAWNING}, [st.BLOCK_DEVICE_MAPPING])
        await c.sleep()
        final = {
            "vm_state": st.ACTIVE,
            "task_state": None,
            "power_state": st.RUNNING,
            "launched_at": c.now(),
        }
        await c.save(ctxt, uuid, final, [st.SPAWNING])
        return f"built on {inst.host}"
