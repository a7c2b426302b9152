"""A cell's compute layer contract (cellsd.compute)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Interface

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from twisted.internet.defer import Deferred

    from cellsd.context import RequestContext
    from cellsd.objects import Instance

# A cell's compute layer (cellsd.compute.simulated.SimulatedCompute).
# ``instance`` is an Instance read from this
# cell's store; actions check its state and return once the action is under
# way (its task_state set), the rest runs on: settled() says when it ends.


class IComputeAPI(Interface):
    """The compute layer of a cell: its hosts and the state machine of its
    instances. A refused action raises InstanceInvalidState."""

    def startup() -> Deferred[None]:
        """Register the hosts as services and compute nodes; recount claims."""

    def shutdown() -> Deferred[None]:
        """Stop the timers and wait for the actions under way."""

    def settled() -> Deferred[None]:
        """Fires when no action is under way."""

    def capacities() -> dict[str, Any]:
        """This cell's capacities (behaviour §5.4), from its enabled hosts."""

    def can_host(flavor: Any) -> bool:
        """Whether some enabled host has room for the flavor now."""

    def build_instances(
        ctxt: RequestContext, instances: Sequence[Any], **build_kwargs: Any
    ) -> Deferred[list[Instance]]:
        """Create the instances here, report them up, and build each on a
        host (first fit); returns the created records."""

    def start(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Power on a stopped instance."""

    def stop(
        ctxt: RequestContext, instance: Instance, do_cast: bool = True, clean_shutdown: bool = True
    ) -> Deferred[Any]:
        """Power off; with ``do_cast`` false, fires once stopped."""

    def reboot(ctxt: RequestContext, instance: Instance, reboot_type: str) -> Deferred[Instance]:
        """SOFT or HARD reboot."""

    def pause(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Pause."""

    def unpause(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Unpause."""

    def suspend(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Suspend."""

    def resume(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Resume."""

    def resize(
        ctxt: RequestContext,
        instance: Instance,
        flavor: Any = None,
        clean_shutdown: bool = True,
        **extra_instance_updates: Any,
    ) -> Deferred[Instance]:
        """Resize to ``flavor`` (cold-migrate when None), recording a migration."""

    def confirm_resize(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Keep the new size; free the old host's share."""

    def revert_resize(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Go back to the old size and host."""

    def live_migrate(
        ctxt: RequestContext,
        instance: Instance,
        block_migration: Any,
        disk_over_commit: Any,
        host_name: str | None,
    ) -> Deferred[Instance]:
        """Move a running instance to another host (first fit when None)."""

    def rebuild(
        ctxt: RequestContext,
        instance: Instance,
        image_href: Any,
        admin_password: Any,
        files_to_inject: Any = None,
        **kwargs: Any,
    ) -> Deferred[Instance]:
        """Rebuild from an image."""

    def snapshot(ctxt: RequestContext, instance: Instance, image_id: str) -> Deferred[Instance]:
        """Snapshot into an image."""

    def backup(
        ctxt: RequestContext, instance: Instance, image_id: str, backup_type: str, rotation: int
    ) -> Deferred[Instance]:
        """Back up, keeping the newest ``rotation`` backups of that type."""

    def set_admin_password(
        ctxt: RequestContext, instance: Instance, password: Any = None
    ) -> Deferred[Instance]:
        """Set the admin password."""

    def reset_network(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Reset networking (rewrites the info cache)."""

    def inject_network_info(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Inject networking into the guest."""

    def soft_delete(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Soft-delete (keeps the resources)."""

    def delete(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Delete; frees the resources and reports the destroy up."""

    def force_delete(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Delete, soft-deleted or not."""

    def lock(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Lock against actions by non-admins."""

    def unlock(ctxt: RequestContext, instance: Instance) -> Deferred[Instance]:
        """Unlock."""

    def get_console_output(
        ctxt: RequestContext, instance: Instance, tail_length: int | None = None
    ) -> Deferred[str]:
        """The instance's console log."""

    def get_console(
        ctxt: RequestContext, instance: Instance, console_type: str
    ) -> Deferred[dict[str, Any]]:
        """Connection details of the instance's console of that type."""

    def validate_console_port(
        ctxt: RequestContext, instance: Instance, port: Any, console_type: str
    ) -> Deferred[bool]:
        """Whether ``port`` is the instance's console port of that type."""

    def get_host_uptime(ctxt: RequestContext, host_name: str) -> Deferred[str]:
        """A host's uptime line; ComputeServiceUnavailable when it is down."""

    def host_rpc(
        ctxt: RequestContext, host_name: str, method: str, args: Mapping[str, Any]
    ) -> Deferred[Any]:
        """A compute-manager RPC to one host (allow-listed methods)."""
